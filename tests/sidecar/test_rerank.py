"""`POST /v1/rerank` over TCP and the Unix socket, on a tiny real cross-encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import loaders
from sidecar.models import LoadOptions, PairInputs, Scores, run_inline
from sidecar.models.families import load_model
from tests.sidecar.conftest import StartServer
from tests.snapshots import make_cross_encoder_snapshot

QUERY = "which container owns the GPU?"
DOCUMENTS = [
    "The sidecar owns the GPU and serves the app over a socket.",
    "Bananas are yellow.",
    {"text": "Kubernetes pods share volumes between containers."},
    "GPU",
]
TEXTS = [d if isinstance(d, str) else d["text"] for d in DOCUMENTS]


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cross_encoder_snapshot(tmp_path_factory.mktemp("reranker"))


def in_process_scores(directory: Path) -> np.ndarray:
    weights, _ = loaders.load_weights([directory / "model.safetensors"])
    model = load_model(directory, weights, LoadOptions(torch.device("cpu"), torch.float32))
    result = run_inline(model, PairInputs(QUERY, TEXTS))
    assert isinstance(result, Scores)
    return result.values


@pytest.fixture(scope="module")
def reranker_onnx_dir(reranker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sidecar.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "reranker-onnx"
    return export_onnx(str(reranker_dir), out, num_samples=16).out


@pytest.mark.parametrize("backend", ["torch", "onnx"])
async def test_rerank_sorts_documents_by_score(
    start_server: StartServer, reranker_dir: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    served = reranker_dir if backend == "torch" else request.getfixturevalue("reranker_onnx_dir")
    s = await start_server(served)
    expected = in_process_scores(reranker_dir)
    body = {"query": QUERY, "documents": DOCUMENTS, "return_documents": True}
    async with (
        s.tcp.post("/v1/rerank", json=body) as r_tcp,
        s.uds.post("/v1/rerank", json=body) as r_uds,
    ):
        assert r_tcp.status == r_uds.status == 200
        tcp, uds = await r_tcp.json(), await r_uds.json()
    assert tcp["results"] == uds["results"]
    results = tcp["results"]
    assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable"))
    np.testing.assert_allclose(
        [r["relevance_score"] for r in results], np.sort(expected)[::-1], atol=1e-5
    )
    assert all(0.0 < r["relevance_score"] < 1.0 for r in results)
    assert [r["document"] for r in results] == [{"text": TEXTS[r["index"]]} for r in results]
    assert tcp["model"] == served.name and tcp["usage"]["total_tokens"] > len(DOCUMENTS)
    async with s.tcp.get("/v1/models") as r:
        card = (await r.json())["data"][0]
    assert card["task"] == "rerank" and card["input_schema"]["route"] == "/v1/rerank"


async def test_top_n_and_raw_scores(start_server: StartServer, reranker_dir) -> None:
    s = await start_server(reranker_dir)
    expected = in_process_scores(reranker_dir)
    body = {"query": QUERY, "documents": DOCUMENTS, "top_n": 2, "raw_scores": True}
    async with s.uds.post("/v1/rerank", json=body) as r:
        assert r.status == 200
        results = (await r.json())["results"]
    assert len(results) == 2 and "document" not in results[0]
    logits = np.log(expected / (1 - expected))
    best = int(np.argmax(expected))
    assert results[0]["index"] == best
    assert results[0]["relevance_score"] == pytest.approx(float(logits[best]), abs=1e-4)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"documents": ["a"]}, 400, "invalid_input"),
        ({"query": 3, "documents": ["a"]}, 400, "invalid_input"),
        ({"query": "q", "documents": "a"}, 400, "invalid_input"),
        ({"query": "q", "documents": []}, 400, "invalid_input"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, 400, "invalid_input"),
        ({"query": "q", "documents": ["a"], "rank_fields": ["x"]}, 400, "invalid_input"),
        ({"query": "q", "documents": ["a"], "model": "other"}, 404, "model_not_found"),
        ({"query": "q", "documents": ["a"] * 300}, 413, "too_many_inputs"),
        ({"query": "q " * 600, "documents": ["a"]}, 400, "input_too_long"),
    ],
)
async def test_bad_rerank_requests(
    start_server: StartServer, reranker_dir, body: dict, status: int, code: str
) -> None:
    s = await start_server(reranker_dir)
    async with s.tcp.post("/v1/rerank", json=body) as r:
        assert r.status == status
        assert (await r.json())["error"]["code"] == code
    async with s.tcp.post("/v1/rerank", json={"query": "q", "documents": ["a"]}) as r:
        assert r.status == 200


async def test_routes_of_other_tasks_refuse_each_other(
    start_server: StartServer, reranker_dir, tiny_embed_dir
) -> None:
    reranker = await start_server(reranker_dir)
    async with reranker.tcp.post("/v1/predict", json={"inputs": ["x"]}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "unsupported_task"
    async with reranker.tcp.post("/v1/embeddings", json={"input": "x"}) as r:
        assert r.status == 400
    embedder = await start_server(tiny_embed_dir)
    async with embedder.tcp.post("/v1/rerank", json={"query": "q", "documents": ["a"]}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "unsupported_task"
