"""Shadow traffic and the versions' metrics: copies compared and exported, never returned,
dropped (not queued) when the device is busy."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest

from sidecar.models import Classification, Classifications, Embeddings, Scores
from sidecar.serving.shadow import compare
from tests.sidecar.conftest import StartServer
from tests.sidecar.versioned import build_versions, expected_vectors, make_root, until


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_versions(tmp_path_factory.mktemp("staging"), "7", "8")


async def scrape(s) -> dict[str, float]:
    async with s.health.get("/metrics") as r:
        text = await r.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(sidecar_(?:shadow|version|model_version|model_swap)\S*) (\S+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


async def test_shadow_copies_are_compared_and_exported_never_returned(
    start_server: StartServer, snapshots, tmp_path: Path
) -> None:
    desired = {"stable": "7", "shadow": {"version": "8", "percent": 100}}
    root = make_root(tmp_path, snapshots, desired)
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0")
    await s.service.registry.reconcile_now()
    texts = ["one shadowed sentence", "and another one"]
    expected = expected_vectors(snapshots["7"], texts)
    for _ in range(10):  # one at a time: the device is idle when each copy is offered
        async with s.tcp.post("/v1/predict", json={"inputs": texts}) as r:
            body = await r.json()
            assert (r.headers["X-Model-Version"], body["model_version"]) == ("7", "7")
            got = np.asarray([row["embedding"] for row in body["results"]], dtype=np.float32)
            np.testing.assert_allclose(got, expected, atol=1e-5)
        await until(lambda: _idle(s))

    figures = await scrape(s)
    assert figures['sidecar_shadow_total{outcome="compared"}'] == 10
    assert figures['sidecar_shadow_agreement_count{measure="cosine"}'] == 10
    # Two random-weight models: their cosine is far from 1, and the metric says so (a histogram
    # whose buckets go below zero has no _sum).
    assert figures['sidecar_shadow_agreement_bucket{le="0.99",measure="cosine"}'] == 10
    assert figures['sidecar_version_requests_total{role="shadow",version="8"}'] == 10
    assert figures['sidecar_version_requests_total{role="stable",version="7"}'] == 10
    assert figures['sidecar_model_version_info{model="m",state="ready",version="8"}'] == 1
    assert 'sidecar_version_requests_total{role="stable",version="8"}' not in figures

    # Saturation: copies are dropped, never queued behind the primaries.
    async def one(i: int) -> str:
        async with s.uds.post("/v1/predict", json={"inputs": [f"load {i}"] * 4}) as r:
            assert r.status == 200
            return r.headers["X-Model-Version"]

    answered = await asyncio.gather(*(one(i) for i in range(200)))
    assert set(answered) == {"7"}
    await until(lambda: _idle(s))
    after = await scrape(s)
    dropped = after['sidecar_shadow_total{outcome="dropped"}']
    compared = after['sidecar_shadow_total{outcome="compared"}'] - 10
    assert (
        dropped > 0 and dropped + compared + after['sidecar_shadow_total{outcome="failed"}'] == 200
    )


async def _idle(s) -> bool:
    return s.service.shadow.running == 0


def test_the_comparisons() -> None:
    a = np.eye(2, dtype=np.float32)
    assert compare(Embeddings(a), Embeddings(a)).value == pytest.approx(1.0)
    flipped = compare(Embeddings(a), Embeddings(a[::-1].copy()))
    assert (flipped.measure, flipped.value) == ("cosine", pytest.approx(0.0))
    assert compare(Embeddings(a), Embeddings(np.ones((2, 3), np.float32))) is None

    def item(label: str, p: float) -> Classification:
        return Classification(label, p, {"pos": p if label == "pos" else 1 - p,
                                          "neg": p if label == "neg" else 1 - p})  # fmt: skip

    labels = compare(
        Classifications([item("pos", 0.9), item("neg", 0.8)]),
        Classifications([item("pos", 0.7), item("pos", 0.6)]),
    )
    assert (labels.measure, labels.value) == ("label", 0.5)
    assert labels.max_abs_diff == pytest.approx(0.4)
    ranks = compare(Scores(np.array([0.1, 0.5, 0.9])), Scores(np.array([3.0, 2.0, 1.0])))
    assert (ranks.measure, ranks.value) == ("rank", -1.0)
    assert compare(Scores(np.array([0.1])), Scores(np.array([0.2]))) is None
    assert compare(Scores(np.array([0.1, 0.2])), Embeddings(a)) is None
