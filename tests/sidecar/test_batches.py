"""The OpenAI Batch API with the official `openai` client, unchanged, on real servers."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.sidecar.conftest import Running, StartServer

FINAL = ("completed", "failed", "cancelled", "expired")


def client(s: Running) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{s.server.settings.port}/v1", api_key="unused", max_retries=0
    )


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def run_batch(api: openai.OpenAI, data: bytes, endpoint: str, timeout_s: float = 120.0) -> Any:
    """Upload, create, poll to a final status: what a user of the client writes."""
    uploaded = api.files.create(file=("requests.jsonl", data), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(data)
    batch = api.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata={"run": "test"},
    )
    assert batch.status in ("validating", "in_progress")
    deadline = time.monotonic() + timeout_s
    while batch.status not in FINAL:
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
        batch = api.batches.retrieve(batch.id)
    return batch


def lines_of(api: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in api.files.content(file_id).content.splitlines()]


async def test_the_official_client_runs_an_embeddings_batch_like_the_interactive_route(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_JOBS_DIR=str(tmp_path))
    api = client(s)
    texts = [f"document {i} " * (1 + i % 9) for i in range(60)]
    requests: list[Any] = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"input": text, "model": "default"},
        }
        for i, text in enumerate(texts)
    ]
    requests.insert(7, b"{this is not json")
    requests.insert(9, {"custom_id": "empty", "method": "POST", "url": "/v1/embeddings",
                        "body": {"input": []}})  # fmt: skip
    requests.insert(11, {"custom_id": "wrong-url", "method": "POST", "url": "/v1/chat",
                         "body": {}})  # fmt: skip
    batch = await asyncio.to_thread(run_batch, api, jsonl(requests), "/v1/embeddings")
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (63, 60)
    assert batch.request_counts.failed == 3
    assert batch.metadata == {"run": "test"}
    assert batch.completed_at is not None and batch.in_progress_at is not None

    output = await asyncio.to_thread(lines_of, api, batch.output_file_id)
    errors = await asyncio.to_thread(lines_of, api, batch.error_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(f"req-{i}" for i in range(60))
    interactive = await asyncio.to_thread(
        lambda: api.embeddings.create(input=texts, model="default")
    )
    by_id = {line["custom_id"]: line for line in output}
    for i, row in enumerate(interactive.data):
        line = by_id[f"req-{i}"]
        assert line["error"] is None and line["id"].startswith("batch_req_")
        response = line["response"]
        assert response["status_code"] == 200
        got = response["body"]["data"][0]["embedding"]
        assert got == pytest.approx(row.embedding, abs=1e-5)
    failed = {line["custom_id"]: line for line in errors}
    assert set(failed) == {None, "empty", "wrong-url"}
    assert failed[None]["response"] is None and failed[None]["error"]["code"] == "invalid_request"
    assert failed["wrong-url"]["response"] is None
    assert failed["empty"]["response"]["status_code"] == 400
    assert failed["empty"]["response"]["body"]["error"]["code"] == "invalid_input"

    listed = await asyncio.to_thread(lambda: api.batches.list(limit=10))
    assert [b.id for b in listed.data] == [batch.id]
    files = await asyncio.to_thread(lambda: api.files.list())
    assert {f.id for f in files.data} >= {batch.input_file_id, batch.output_file_id}


async def test_predict_and_rerank_lines(
    start_server: StartServer, tiny_rerank_dir: Path, tiny_classify_dir: Path, tmp_path: Path
) -> None:
    reranker = await start_server(tiny_rerank_dir, SIDECAR_JOBS_DIR=str(tmp_path / "r"))
    line = {"query": "q", "documents": ["a b", "c d e"], "return_documents": True}
    requests = [{"custom_id": "r", "method": "POST", "url": "/v1/rerank", "body": line}]
    batch = await asyncio.to_thread(run_batch, client(reranker), jsonl(requests), "/v1/rerank")
    assert batch.status == "completed"
    assert batch.error_file_id is None  # no line failed: no error file, as OpenAI's
    [out] = await asyncio.to_thread(lines_of, client(reranker), batch.output_file_id)
    async with reranker.tcp.post("/v1/rerank", json=line) as r:
        interactive = await r.json()
    got = out["response"]["body"]["results"]
    assert [g["index"] for g in got] == [w["index"] for w in interactive["results"]]
    for g, w in zip(got, interactive["results"], strict=True):
        assert g["relevance_score"] == pytest.approx(w["relevance_score"], abs=1e-5)

    classifier = await start_server(tiny_classify_dir, SIDECAR_JOBS_DIR=str(tmp_path / "c"))
    body = {"inputs": ["some text"]}
    requests = [{"custom_id": "p", "method": "POST", "url": "/v1/predict", "body": body}]
    batch = await asyncio.to_thread(run_batch, client(classifier), jsonl(requests), "/v1/predict")
    [out] = await asyncio.to_thread(lines_of, client(classifier), batch.output_file_id)
    async with classifier.tcp.post("/v1/predict", json=body) as r:
        interactive = await r.json()
    assert out["response"]["body"]["results"][0]["label"] == interactive["results"][0]["label"]


async def test_a_batch_can_be_cancelled_with_the_client(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_JOBS_DIR=str(tmp_path))
    api = client(s)
    requests = [
        {
            "custom_id": str(i),
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"input": "w " * 30},
        }
        for i in range(40_000)
    ]
    uploaded = await asyncio.to_thread(
        lambda: api.files.create(file=("big.jsonl", jsonl(requests)), purpose="batch")
    )
    batch = await asyncio.to_thread(
        lambda: api.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    )
    # Polling, as a client does (the server has no hook for "some lines ran").
    async with asyncio.timeout(60):
        while True:
            batch = await asyncio.to_thread(api.batches.retrieve, batch.id)
            if batch.request_counts is not None and batch.request_counts.completed >= 256:
                break
            await asyncio.sleep(0.02)
    cancelled = await asyncio.to_thread(api.batches.cancel, batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    async with asyncio.timeout(30):
        while True:
            batch = await asyncio.to_thread(api.batches.retrieve, batch.id)
            if batch.status == "cancelled":
                break
            await asyncio.sleep(0.02)
    assert batch.cancelled_at is not None
    done = batch.request_counts.completed  # type: ignore[union-attr]
    assert 256 <= done < 40_000
    partial = await asyncio.to_thread(lines_of, api, batch.output_file_id)
    assert len(partial) == done
    assert [line["custom_id"] for line in partial] == [str(i) for i in range(done)]
    # The input file of a finished batch can go; an unknown one is 404.
    await asyncio.to_thread(api.files.delete, uploaded.id)
    with pytest.raises(openai.NotFoundError):
        await asyncio.to_thread(api.files.retrieve, uploaded.id)


async def test_files_refusals(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    s = await start_server(
        tiny_embed_dir, SIDECAR_JOBS_DIR=str(tmp_path), SIDECAR_JOB_MAX_BODY_BYTES="4096",
        SIDECAR_JOB_MAX_INPUTS="3",
    )  # fmt: skip

    async def post(purpose: str, data: bytes) -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        form.add_field("purpose", purpose)
        form.add_field("file", io.BytesIO(data), filename="x.jsonl")
        async with s.uds.post("/v1/files", data=form) as r:
            await r.read()
            return r

    assert (await post("fine-tune", b"{}\n")).status == 400
    assert (await post("batch", b"x" * 5000)).status == 413
    async with s.uds.post("/v1/files", json={"purpose": "batch"}) as r:
        assert r.status == 400
    api = client(s)
    four = jsonl([{"custom_id": str(i)} for i in range(4)])
    uploaded = await asyncio.to_thread(
        lambda: api.files.create(file=("four.jsonl", four), purpose="batch")
    )
    with pytest.raises(openai.APIStatusError) as caught:
        await asyncio.to_thread(
            lambda: api.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
            )
        )
    assert caught.value.status_code == 413
    with pytest.raises(openai.NotFoundError):
        await asyncio.to_thread(
            lambda: api.batches.create(
                input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h"
            )
        )


async def test_a_batch_repeating_a_custom_id_fails_validation_as_openais_does(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_JOBS_DIR=str(tmp_path))
    api = client(s)
    line = {"method": "POST", "url": "/v1/embeddings", "body": {"input": "hello"}}
    data = jsonl(
        [
            {"custom_id": "a", **line},
            b"",  # a blank line still counts as a line of the file
            {"custom_id": "b", **line},
            b"not json",  # no custom_id to compare: an error line if it ran
            {"custom_id": "a", **line},
        ]
    )

    def create() -> Any:
        uploaded = api.files.create(file=("dup.jsonl", data), purpose="batch")
        return api.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )

    batch = await asyncio.to_thread(create)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    (error,) = batch.errors.data
    assert (error.code, error.line, error.param) == ("duplicate_custom_id", 5, "custom_id")
    assert "'a'" in (error.message or "") and "line 1" in (error.message or "")
    assert batch.output_file_id is None and batch.request_counts.completed == 0
    await asyncio.sleep(0.3)  # never runs
    again = await asyncio.to_thread(api.batches.retrieve, batch.id)
    assert again.status == "failed" and again.request_counts.completed == 0
    # Unique ids run as usual.
    unique = data.replace(b'"custom_id": "a", "method"', b'"custom_id": "c", "method"', 1)
    done = await asyncio.to_thread(run_batch, api, unique, "/v1/embeddings")
    assert done.status == "completed" and done.request_counts.failed == 1  # the "not json" line


async def test_a_batch_whose_every_line_fails_has_an_error_file_and_no_output_file(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_JOBS_DIR=str(tmp_path))
    api = client(s)
    lines: list[Any] = [
        b"{not json",
        {"custom_id": "get", "method": "GET", "url": "/v1/embeddings", "body": {"input": "x"}},
        {"custom_id": "empty", "method": "POST", "url": "/v1/embeddings", "body": {"input": []}},
    ]
    batch = await asyncio.to_thread(run_batch, api, jsonl(lines), "/v1/embeddings")
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 3)
    assert batch.output_file_id is None and batch.error_file_id is not None
    errors = await asyncio.to_thread(lines_of, api, batch.error_file_id)
    assert sorted(str(line["custom_id"]) for line in errors) == ["None", "empty", "get"]


async def test_malformed_uploads_are_400_and_leave_no_file(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_JOBS_DIR=str(tmp_path))
    file_part = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        b'{"custom_id": "a"}\n\r\n'
    )
    bodies = [
        # a part whose header line is not a header (schemathesis found it a 500)
        b"--b\r\n[['L', -2.6e+46]]\r\n\r\nx\r\n--b--\r\n",
        # a good file, then a part whose header is broken: the stored file goes too
        file_part + b"--b\r\nnot a header\r\n\r\nx\r\n--b--\r\n",
        # two files
        file_part + file_part + b"--b--\r\n",
    ]
    for body in bodies:
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        async with s.tcp.post("/v1/files", data=body, headers=headers) as r:
            assert r.status == 400, await r.text()
            error = (await r.json())["error"]
        assert error["code"] == "invalid_input"
        assert "Traceback" not in error["message"] and "/" not in error["message"][:40]
    async with s.tcp.get("/v1/files") as r:
        assert (await r.json())["data"] == []
    assert not list((tmp_path / "files").iterdir())  # nor its bytes on disk
