"""The response cache (SIDECAR_CACHE_MAX_ITEMS) on real servers: the demo model for embeddings,
a tiny real cross-encoder for rerank. A hit is proven by the batch counters standing still."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.sidecar.conftest import DEMO_DIR, Running, StartServer

SENTENCES = ["the sidecar owns the GPU", "a pod shares volumes", "bananas are yellow"]
LONG = "tokens " * 600  # far over the demo's 256-token limit


async def figures(s: Running) -> dict[str, float]:
    """The cache and batch figures of /metrics on the health port."""
    async with s.health.get("/metrics") as r:
        text = await r.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("sidecar_cache", "sidecar_batch_size_")):
                label = sample.labels.get("result")
                values[sample.name + (f":{label}" if label else "")] = sample.value
    return values


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


async def predict(s: Running, inputs: list[str], **parameters: Any) -> dict[str, Any]:
    body = {"inputs": inputs, "parameters": parameters}
    async with s.tcp.post("/v1/predict", json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


def vectors(data: dict[str, Any]) -> list[list[float]]:
    return [result["embedding"] for result in data["results"]]


async def test_a_hit_is_bit_identical_and_skips_the_model(start_server: StartServer) -> None:
    s = await start_server(DEMO_DIR, SIDECAR_CACHE_MAX_ITEMS="64")
    start = await figures(s)
    first = await predict(s, SENTENCES)
    computed = await figures(s)
    assert moved(start, computed)["sidecar_cache_total:miss"] == 3
    assert computed["sidecar_batch_size_count"] > start["sidecar_batch_size_count"]
    assert computed["sidecar_cache_items"] == 3

    again = await predict(s, SENTENCES)
    # JSON floats round-trip a float32 exactly: equal numbers are equal bits.
    assert vectors(again) == vectors(first)
    assert again["usage"] == first["usage"]
    assert moved(computed, await figures(s)) == {"sidecar_cache_total:hit": 3}

    # OpenAI: the same inputs are the same items; base64 shows the very bytes.
    before = await figures(s)
    body = {"input": SENTENCES, "encoding_format": "base64"}
    async with s.tcp.post("/v1/embeddings", json=body) as r:
        assert r.status == 200
        data = (await r.json())["data"]
    raw = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
    assert np.array_equal(np.stack(raw), np.asarray(vectors(first), dtype=np.float32))
    assert moved(before, await figures(s)) == {"sidecar_cache_total:hit": 3}


async def test_only_the_misses_of_a_request_are_computed(start_server: StartServer) -> None:
    s = await start_server(DEMO_DIR, SIDECAR_CACHE_MAX_ITEMS="64")
    alone = await predict(s, SENTENCES[1:2])
    before = await figures(s)
    mixed = await predict(s, SENTENCES)
    change = moved(before, await figures(s))
    assert change["sidecar_cache_total:hit"] == 1
    assert change["sidecar_cache_total:miss"] == 2
    assert change["sidecar_batch_size_sum"] == 2  # the two misses, never the hit
    assert vectors(mixed)[1] == vectors(alone)[0]
    assert change["sidecar_cache_items"] == 2


async def test_parameters_get_their_own_results(start_server: StartServer) -> None:
    plain = await start_server(DEMO_DIR)
    s = await start_server(DEMO_DIR, SIDECAR_CACHE_MAX_ITEMS="64")
    normalized = await predict(s, SENTENCES[:1])
    # normalize is applied to the model's output after the cache: a hit, un-normalised.
    before = await figures(s)
    raw = await predict(s, SENTENCES[:1], normalize=False)
    assert moved(before, await figures(s)) == {"sidecar_cache_total:hit": 1}
    assert vectors(raw) == vectors(await predict(plain, SENTENCES[:1], normalize=False))
    assert vectors(normalized) == vectors(await predict(plain, SENTENCES[:1]))
    assert np.linalg.norm(vectors(raw)[0]) != pytest.approx(1.0, abs=1e-3)

    # truncate changes the tokens the model reads: its own entry, and no hit bypasses the check.
    before = await figures(s)
    cut = await predict(s, [LONG], truncate=True)
    assert moved(before, await figures(s))["sidecar_cache_total:miss"] == 1
    assert vectors(cut) == vectors(await predict(plain, [LONG], truncate=True))
    assert vectors(await predict(s, [LONG], truncate=True)) == vectors(cut)
    async with s.tcp.post("/v1/predict", json={"inputs": [LONG]}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "input_too_long"
    assert (await figures(s))["sidecar_cache_items"] == 2


async def test_the_least_recently_used_go_first(start_server: StartServer) -> None:
    s = await start_server(DEMO_DIR, SIDECAR_CACHE_MAX_ITEMS="4")
    texts = [f"sentence number {n}" for n in range(10)]
    for text in texts:
        await predict(s, [text])
        assert (await figures(s))["sidecar_cache_items"] <= 4
    await predict(s, texts[6:7])  # 6 is now the most recently used, 7 the least
    await predict(s, texts[:1])  # a miss that evicts 7
    before = await figures(s)
    await predict(s, [texts[6], texts[8], texts[9], texts[0]])
    assert moved(before, await figures(s)) == {"sidecar_cache_total:hit": 4}
    before = await figures(s)
    await predict(s, texts[7:8])
    change = moved(before, await figures(s))
    assert change["sidecar_cache_total:miss"] == 1 and "sidecar_cache_total:hit" not in change
    assert (await figures(s))["sidecar_cache_items"] == 4


async def test_off_by_default(start_server: StartServer, tiny_embed_dir: Path) -> None:
    s = await start_server(tiny_embed_dir)
    assert s.service.cache is None
    start = await figures(s)
    for _ in range(2):
        await predict(s, SENTENCES[:2])
    end = await figures(s)
    assert moved(start, end)["sidecar_batch_size_sum"] == 4  # every item computed
    assert {name: value for name, value in end.items() if "cache" in name} == {
        "sidecar_cache_total:hit": 0,
        "sidecar_cache_total:miss": 0,
        "sidecar_cache_items": 0,
        "sidecar_cache_bytes": 0,
    }


async def test_a_reload_never_serves_the_old_results(
    start_server: StartServer, tiny_embed_dir: Path
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_CACHE_MAX_ITEMS="64")
    await predict(s, SENTENCES)
    old = s.service.served.engine
    loaded = await s.service.load()  # the same files, loaded again: another model version
    await s.service.start(loaded)
    await old.stop()
    before = await figures(s)
    assert before["sidecar_cache_items"] == 0  # the retired version's entries are gone
    await predict(s, SENTENCES)
    assert moved(before, await figures(s))["sidecar_cache_total:miss"] == 3


async def test_rerank_hits_are_bit_identical(
    start_server: StartServer, tiny_rerank_dir: Path
) -> None:
    s = await start_server(tiny_rerank_dir, SIDECAR_CACHE_MAX_ITEMS="64")
    body = {"query": "which container owns the GPU?", "documents": SENTENCES}
    async with s.tcp.post("/v1/rerank", json=body) as r:
        first = (await r.json())["results"]
    before = await figures(s)
    async with s.tcp.post("/v1/rerank", json=body) as r:
        again = (await r.json())["results"]
    assert again == first
    assert moved(before, await figures(s)) == {"sidecar_cache_total:hit": 3}
    # Another query makes other pairs; raw scores are the same pairs' logits.
    async with s.tcp.post("/v1/rerank", json={**body, "query": "what is yellow?"}) as r:
        assert r.status == 200
    async with s.tcp.post("/v1/rerank", json={**body, "raw_scores": True}) as r:
        raw = {result["index"]: result["relevance_score"] for result in (await r.json())["results"]}
    for result in first:
        logit = np.float32(raw[result["index"]])
        sigmoid = np.float32(1.0) / (np.float32(1.0) + np.exp(-logit))
        assert result["relevance_score"] == pytest.approx(float(sigmoid), abs=1e-6)
    change = moved(before, await figures(s))
    assert change["sidecar_cache_total:miss"] == 3 and change["sidecar_cache_total:hit"] == 6
