"""The HTTP API over TCP and the Unix socket, on tiny real models: each test on the torch backend
and on the model's ONNX copy (`sidecar export onnx`), which serve the same routes."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import pytest

from tests.sidecar.conftest import StartServer


@pytest.fixture(params=["torch", "onnx"])
def tiny_embed_dir(request: pytest.FixtureRequest, tiny_embed_dir: Path) -> Path:
    if request.param == "torch":
        return tiny_embed_dir
    return Path(request.getfixturevalue("tiny_embed_onnx_dir"))


@pytest.fixture(params=["torch", "onnx"])
def tiny_classify_dir(request: pytest.FixtureRequest, tiny_classify_dir: Path) -> Path:
    if request.param == "torch":
        return tiny_classify_dir
    return Path(request.getfixturevalue("tiny_classify_onnx_dir"))


async def test_predict_over_tcp_and_socket_match(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(tiny_embed_dir)
    body = {"inputs": ["hello world", {"text": "a second input"}]}
    async with s.tcp.post("/v1/predict", json=body) as r_tcp:
        assert r_tcp.status == 200
        tcp = await r_tcp.json()
    async with s.uds.post("/v1/predict", json=body) as r_uds:
        assert r_uds.status == 200
        uds = await r_uds.json()
    assert tcp["results"] == uds["results"]
    assert len(tcp["results"]) == 2
    assert tcp["model"] == tiny_embed_dir.name
    assert tcp["usage"]["input_tokens"] == tcp["usage"]["total_tokens"] > 4
    for result in tcp["results"]:
        assert np.linalg.norm(result["embedding"]) == pytest.approx(1.0, abs=1e-5)
    for route in ("/readyz", "/v1/models"):
        async with s.tcp.get(route) as a, s.uds.get(route) as b:
            assert a.status == b.status == 200
            assert await a.json() == await b.json()


async def test_named_model_route_and_aliases(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_MODEL_NAME="minilm", SIDECAR_MODEL_VERSION="7")
    for name in ("minilm", "default"):
        async with s.tcp.post(f"/v1/models/{name}/predict", json={"inputs": ["x"]}) as r:
            assert r.status == 200
            data = await r.json()
            assert (data["model"], data["model_version"]) == ("minilm", "7")
    async with s.tcp.get("/v1/models/minilm") as r:
        card = await r.json()
    assert card["embedding_dimension"] == 32 and card["task"] == "embed"
    assert card["batching"]["max_size"] == 32
    async with s.tcp.post("/v1/models/other/predict", json={"inputs": ["x"]}) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "model_not_found"
    async with s.tcp.get("/v1/models/other") as r:
        assert r.status == 404


async def test_normalize_false_returns_raw_pooled_vectors(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir)
    body = {"inputs": ["some text here"], "parameters": {"normalize": False}}
    async with s.tcp.post("/v1/predict", json=body) as r:
        raw = np.array((await r.json())["results"][0]["embedding"])
    async with s.tcp.post("/v1/predict", json={"inputs": ["some text here"]}) as r:
        unit = np.array((await r.json())["results"][0]["embedding"])
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-6)


async def test_classify_returns_labels_and_scores(
    start_server: StartServer, tiny_classify_dir
) -> None:
    s = await start_server(tiny_classify_dir)
    async with s.uds.post("/v1/predict", json={"inputs": ["good", "bad", "meh"]}) as r:
        assert r.status == 200
        results = (await r.json())["results"]
    assert len(results) == 3
    for result in results:
        assert set(result["scores"]) == {"negative", "neutral", "positive"}
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert result["label"] == max(result["scores"], key=result["scores"].get)
        assert result["score"] == result["scores"][result["label"]]
    async with s.tcp.post("/v1/embeddings", json={"input": "x"}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "unsupported_task"


async def test_openai_embeddings_float_and_base64(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir)
    async with s.tcp.post("/v1/embeddings", json={"input": ["a", "b"], "model": "default"}) as r:
        assert r.status == 200
        floats = await r.json()
    async with s.tcp.post(
        "/v1/embeddings", json={"input": ["a", "b"], "encoding_format": "base64"}
    ) as r:
        encoded = await r.json()
    assert floats["object"] == "list" and [d["index"] for d in floats["data"]] == [0, 1]
    for plain, packed in zip(floats["data"], encoded["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(packed["embedding"]), dtype="<f4")
        np.testing.assert_allclose(decoded, plain["embedding"], rtol=1e-6)
    assert floats["usage"]["prompt_tokens"] == floats["usage"]["total_tokens"] > 0
    async with s.tcp.post("/v1/embeddings", json={"input": "a", "dimensions": 7}) as r:
        assert r.status == 400
    async with s.tcp.post("/v1/embeddings", json={"input": [[1, 2, 3]]}) as r:
        assert r.status == 400
        assert "token-id" in (await r.json())["error"]["message"]


async def test_request_id_is_echoed_or_generated(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(tiny_embed_dir)
    async with s.tcp.post(
        "/v1/predict", json={"inputs": ["x"]}, headers={"X-Request-Id": "abc-123"}
    ) as r:
        assert r.headers["X-Request-Id"] == "abc-123"
    async with s.tcp.post("/v1/predict", data=b"{", headers={"X-Request-Id": "abc-124"}) as r:
        assert r.headers["X-Request-Id"] == "abc-124"
        assert (await r.json())["error"]["request_id"] == "abc-124"
    async with s.tcp.get("/livez", headers={"X-Request-Id": "bad id with spaces"}) as r:
        generated = r.headers["X-Request-Id"]
    assert generated != "bad id with spaces" and len(generated) == 32


async def test_health_port_serves_health_and_metrics_only(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir)
    for route in ("/livez", "/readyz", "/startupz", "/metrics"):
        async with s.health.get(route) as r:
            assert r.status == 200, route
    for route in ("/v1/predict", "/v1/embeddings"):
        async with s.health.post(route, json={"inputs": ["x"]}) as r:
            assert r.status == 404
    async with s.health.get("/v1/models") as r:
        assert r.status == 404


async def test_bearer_token_guards_inference_only(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir, auth_token="s3cret")
    async with s.tcp.post("/v1/predict", json={"inputs": ["x"]}) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert (await r.json())["error"]["code"] == "unauthorized"
    wrong = {"Authorization": "Bearer nope"}
    async with s.tcp.post("/v1/predict", json={"inputs": ["x"]}, headers=wrong) as r:
        assert r.status == 401
    right = {"Authorization": "Bearer s3cret"}
    async with s.uds.post("/v1/predict", json={"inputs": ["x"]}, headers=right) as r:
        assert r.status == 200
    async with s.tcp.get("/readyz") as r:
        assert r.status == 200


async def test_socket_file_mode_and_stale_socket_replaced(
    start_server: StartServer, tiny_embed_dir, socket_dir: str
) -> None:
    import os
    import socket
    import stat

    stale = f"{socket_dir}/s0.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(stale)
    leftover.close()  # a socket file with nobody behind it, as a killed process leaves
    s = await start_server(tiny_embed_dir, SIDECAR_UDS_MODE="0600")
    assert s.socket_path == stale
    assert stat.S_IMODE(os.stat(stale).st_mode) == 0o600
    async with s.uds.get("/readyz") as r:
        assert r.status == 200


async def test_info_reports_settings_and_load(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(tiny_embed_dir, HF_TOKEN="hf_secret")
    async with s.tcp.get("/v1/info") as r:
        info = await r.json()
    assert info["phase"] == "ready"
    assert info["settings"]["hf_token"] == "<redacted>"
    assert "hf_secret" not in json.dumps(info)
    load = info["load"]
    if (tiny_embed_dir / "model.onnx").exists():  # ONNX Runtime reads the graph while building
        assert (load["bytes"], load["weight_files"], info["settings"]["backend"]) == (0, 0, "auto")
        assert load["phases_s"]["build"] > 0
    else:
        assert load["bytes"] > 0 and load["tensors"] > 0 and load["gb_per_s"] > 0
    assert set(load["phases_s"]) == {"resolve", "weights", "build", "warmup"}


async def test_info_reports_the_measured_batch_cost(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir)
    async with s.tcp.get("/v1/info") as r:
        assert (await r.json())["batching"] == {"batch_overhead_tokens": None}
    for size in (1, 4, 16, 64) * 4:  # batches of different sizes, one after another
        texts = [f"sentence {i} with a few words in it" for i in range(size)]
        async with s.tcp.post("/v1/predict", json={"inputs": texts}) as r:
            assert r.status == 200
    async with s.tcp.get("/v1/info") as r:
        overhead = (await r.json())["batching"]["batch_overhead_tokens"]
    # Sixteen batches from 1 to 32 items: enough to fit the fixed and per-token parts.
    assert isinstance(overhead, float) and overhead > 0


async def test_concurrent_requests_are_batched(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(
        tiny_embed_dir, SIDECAR_BATCH_WINDOW_MS="50", SIDECAR_BATCH_ADAPTIVE="false"
    )
    texts = [f"sentence number {i} " * (1 + i % 5) for i in range(24)]

    async def one(text: str) -> list[float]:
        async with s.tcp.post("/v1/predict", json={"inputs": [text]}) as r:
            assert r.status == 200
            return list((await r.json())["results"][0]["embedding"])

    together = await asyncio.gather(*(one(t) for t in texts))
    async with s.tcp.post("/v1/predict", json={"inputs": texts}) as r:
        alone = [res["embedding"] for res in (await r.json())["results"]]
    np.testing.assert_allclose(np.array(together), np.array(alone), atol=1e-5)
    async with s.health.get("/metrics") as r:
        text = await r.text()
    count = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("sidecar_batch_size_count")
    )
    assert count < 24  # 25 requests' items went in fewer forward passes
