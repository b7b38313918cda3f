"""The native job API over real servers (TCP and the Unix socket), on real models."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.sidecar.conftest import Running, StartServer
from tests.sidecar.test_event_loop import slow_steps

__all__ = ["slow_steps"]  # the fixture

TERMINAL = ("completed", "failed", "cancelled")


async def wait_status(
    session: aiohttp.ClientSession,
    job_id: str,
    statuses: tuple[str, ...] = TERMINAL,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Poll the job until its status is one of `statuses`."""
    async with asyncio.timeout(timeout_s):
        while True:
            async with session.get(f"/v1/jobs/{job_id}") as r:
                assert r.status == 200
                job = await r.json()
            if job["status"] in statuses:
                return job
            await asyncio.sleep(0.02)


async def results(
    session: aiohttp.ClientSession, job_id: str, **query: int
) -> list[dict[str, Any]]:
    async with session.get(f"/v1/jobs/{job_id}/results", params=query) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "application/x-ndjson"
        body = await r.read()
    # Off the loop: the client shares it with the server, and thousands of embeddings take
    # the JSON decoder a good share of a second (the loop test would see the test's own work).
    return await asyncio.to_thread(lambda: [json.loads(line) for line in body.splitlines()])


async def submit(session: aiohttp.ClientSession, body: dict[str, Any]) -> dict[str, Any]:
    # A large body goes from a file-like object (aiohttp warns of large bytes).
    data = io.BytesIO(await asyncio.to_thread(lambda: json.dumps(body).encode()))
    headers = {"Content-Type": "application/json"}
    async with session.post("/v1/jobs", data=data, headers=headers) as r:
        assert r.status == 202, await r.text()
        job = await r.json()
        assert r.headers["Location"] == f"/v1/jobs/{job['id']}"
        return job


async def start_jobs(
    start_server: StartServer, model: Path, directory: Path, **env: str
) -> Running:
    return await start_server(model, SIDECAR_JOBS_DIR=str(directory), **env)


async def test_jobs_are_off_without_a_directory(
    start_server: StartServer, tiny_embed_dir: Path
) -> None:
    s = await start_server(tiny_embed_dir)
    for method, path in (
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/x"),
        ("GET", "/v1/batches"),
        ("GET", "/v1/files"),
    ):
        async with s.uds.request(method, path, json={}) as r:
            assert r.status == 501
            body = await r.json()
            assert body["error"]["code"] == "jobs_disabled"
            assert "SIDECAR_JOBS_DIR" in body["error"]["message"]


async def test_a_job_runs_to_completion_with_the_interactive_results(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    s = await start_jobs(start_server, tiny_embed_dir, tmp_path)
    texts = [f"text number {i} " * (1 + i % 5) for i in range(40)]
    inputs: list[Any] = [*texts[:10], 123, *texts[10:]]  # one bad input among them
    job = await submit(s.tcp, {"endpoint": "/v1/predict", "inputs": inputs, "metadata": {"k": "v"}})
    assert job["status"] == "queued"
    assert job["progress"] == {"completed": 0, "failed": 0, "total": 41}
    done = await wait_status(s.uds, job["id"])
    assert done["status"] == "completed"
    assert done["progress"] == {"completed": 40, "failed": 1, "total": 41}
    assert done["metadata"] == {"k": "v"}
    lines = await results(s.uds, job["id"])
    assert [line["index"] for line in lines] == list(range(41))
    assert lines[10]["error"]["status"] == 400 and lines[10]["error"]["code"] == "invalid_input"
    async with s.tcp.post("/v1/predict", json={"inputs": texts}) as r:
        interactive = (await r.json())["results"]
    computed = [line["result"] for line in lines if "result" in line]
    for got, want in zip(computed, interactive, strict=True):
        assert got["embedding"] == pytest.approx(want["embedding"], abs=1e-5)
    # Pages of results.
    page = await results(s.tcp, job["id"], offset=5, limit=7)
    assert [line["index"] for line in page] == list(range(5, 12))
    assert await results(s.tcp, job["id"], offset=41) == []


async def progress_events(
    session: aiohttp.ClientSession, job_id: str, until: Any
) -> list[dict[str, Any]]:
    """Read the job's SSE progress events until `until(job)` holds or the stream ends."""
    seen: list[dict[str, Any]] = []
    async with session.get(f"/v1/jobs/{job_id}/events") as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        async with asyncio.timeout(60):
            async for raw in r.content:
                line = raw.decode().strip()
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if until(seen[-1]):
                        break
    return seen


async def test_results_and_progress_are_readable_while_the_job_runs(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    s = await start_jobs(start_server, tiny_embed_dir, tmp_path)
    inputs = [f"sentence {i} " * (1 + i % 7) for i in range(6000)]
    job = await submit(s.uds, {"endpoint": "/v1/embeddings", "inputs": inputs})
    events = await progress_events(
        s.uds, job["id"], lambda j: j["status"] == "running" and j["progress"]["completed"] > 0
    )
    running = events[-1]
    assert 0 < running["progress"]["completed"] < 6000
    assert running["estimated_completion"] >= int(time.time()) - 1  # from the drain rate
    partial = await results(s.tcp, job["id"], limit=10_000)
    assert running["progress"]["completed"] <= len(partial) < 6000
    assert [line["index"] for line in partial] == list(range(len(partial)))
    assert len(partial[0]["result"]["embedding"]) == 32
    # The events go on to the end, and the end is the last event.
    events = await progress_events(s.tcp, job["id"], lambda j: False)
    assert events[-1]["status"] == "completed"
    assert events[-1]["progress"]["completed"] == 6000
    assert len(await results(s.tcp, job["id"], limit=10_000)) == 6000


async def batch_count(s: Running) -> float:
    async with s.health.get("/metrics") as r:
        text = await r.text()
    return float(text.split("sidecar_batch_size_count ")[1].split()[0])


async def test_cancel_stops_the_job_and_keeps_its_partial_results(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    long_job = ["words " * 20] * 50_000
    s, job = await start_mid_job(start_server, tiny_embed_dir, tmp_path, long_job, done=256)
    async with s.uds.post(f"/v1/jobs/{job['id']}/cancel") as r:
        assert r.status == 200
        assert (await r.json())["status"] in ("cancelling", "cancelled")
    done = await wait_status(s.tcp, job["id"])
    assert done["status"] == "cancelled"
    computed = done["progress"]["completed"]
    assert 256 <= computed < 50_000
    batcher = s.service.served.engine.batcher
    assert batcher.bulk_depth == 0
    batches_before = await batch_count(s)
    await asyncio.sleep(0.3)
    assert await batch_count(s) == batches_before  # no forward pass since
    assert len(await results(s.uds, job["id"], limit=10_000)) == computed
    async with s.tcp.post(f"/v1/jobs/{job['id']}/cancel") as r:
        assert r.status == 409 and (await r.json())["error"]["code"] == "job_conflict"
    # A finished job can be deleted; then it is gone.
    async with s.tcp.delete(f"/v1/jobs/{job['id']}") as r:
        assert r.status == 200 and (await r.json())["deleted"] is True
    async with s.tcp.get(f"/v1/jobs/{job['id']}") as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "job_not_found"


async def test_a_running_job_cannot_be_deleted_and_jobs_are_listed_newest_first(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    s = await start_jobs(start_server, tiny_embed_dir, tmp_path)
    first = await submit(s.tcp, {"endpoint": "/v1/predict", "inputs": ["a"] * 20_000})
    second = await submit(s.tcp, {"endpoint": "/v1/predict", "inputs": ["b"]})
    async with s.tcp.delete(f"/v1/jobs/{first['id']}") as r:
        assert r.status == 409
    async with s.uds.get("/v1/jobs", params={"limit": "1"}) as r:
        page = await r.json()
    assert [j["id"] for j in page["data"]] == [second["id"]] and page["has_more"] is True
    async with s.uds.get("/v1/jobs", params={"after": second["id"]}) as r:
        page = await r.json()
    assert [j["id"] for j in page["data"]] == [first["id"]] and page["has_more"] is False
    async with s.uds.get("/v1/jobs", params={"limit": "0"}) as r:
        assert r.status == 400


async def start_mid_job(
    start_server: StartServer,
    model: Path,
    directory: Path,
    inputs: list[str] | None = None,
    done: int = 512,
) -> tuple[Running, dict[str, Any]]:
    """A server on `directory` running a predict job of `inputs` (8 000 numbered lines by
    default), `done` of them completed."""
    first = await start_jobs(start_server, model, directory)
    inputs = [f"line {i}" for i in range(8000)] if inputs is None else inputs
    job = await submit(first.tcp, {"endpoint": "/v1/predict", "inputs": inputs})
    await progress_events(first.tcp, job["id"], lambda j: j["progress"]["completed"] >= done)
    return first, job


async def assert_done_once(session: aiohttp.ClientSession, job_id: str, count: int) -> None:
    """The job completes, with a result for every input exactly once, in order."""
    done = await wait_status(session, job_id, timeout_s=120)
    assert done["status"] == "completed"
    assert done["progress"] == {"completed": count, "failed": 0, "total": count}
    lines = await results(session, job_id, limit=10_000)
    assert [line["index"] for line in lines] == list(range(count))


async def test_a_job_resumes_after_a_restart_and_holds_every_input_once(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    first, job = await start_mid_job(start_server, tiny_embed_dir, tmp_path)
    await first.server.stop()  # the micro-batch in flight is dropped
    second = await start_jobs(start_server, tiny_embed_dir, tmp_path)
    await assert_done_once(second.uds, job["id"], 8000)


async def test_a_second_sidecar_on_the_directory_waits_its_turn_then_runs_the_jobs(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    # Two pods on one volume, or a rollout's new pod beside the old one still draining.
    first, job = await start_mid_job(start_server, tiny_embed_dir, tmp_path)
    second = await start_jobs(start_server, tiny_embed_dir, tmp_path)
    async with second.tcp.post("/v1/predict", json={"inputs": ["served as usual"]}) as r:
        assert r.status == 200
    job_path = f"/v1/jobs/{job['id']}"
    for method, path in (("GET", "/v1/jobs"), ("GET", job_path),
                         ("POST", f"{job_path}/cancel"), ("GET", "/v1/batches")):  # fmt: skip
        async with second.uds.request(method, path) as r:
            assert r.status == 503, (method, path, await r.text())
            assert r.headers["Retry-After"] == "5"
            assert (await r.json())["error"]["code"] == "jobs_locked"
    async with second.uds.post("/v1/jobs", json={"endpoint": "/v1/predict", "inputs": ["x"]}) as r:
        assert r.status == 503
    async with first.tcp.get(job_path) as r:
        assert (await r.json())["status"] == "running"  # still, on the first
    await first.server.stop()  # lets go of the directory
    async with asyncio.timeout(10):  # the second tries again every second
        while True:
            async with second.uds.get(job_path) as r:
                if r.status == 200:
                    break
                assert r.status == 503
            await asyncio.sleep(0.1)
    await assert_done_once(second.uds, job["id"], 8000)


async def test_refusals_at_submit(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    s = await start_jobs(
        start_server,
        tiny_embed_dir,
        tmp_path,
        SIDECAR_JOB_MAX_INPUTS="5",
        SIDECAR_JOB_MAX_BODY_BYTES="2048",
        SIDECAR_JOB_CALLBACK_ALLOW="http://127.0.0.1:9",
        SIDECAR_JOB_CALLBACK_SECRET_FILE=str(secret),
    )
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"endpoint": "/v1/predict", "inputs": ["a"] * 6}, 413, "too_many_inputs"),
        ({"endpoint": "/v1/predict", "inputs": ["a" * 3000]}, 413, "payload_too_large"),
        ({"endpoint": "/v1/nope", "inputs": ["a"]}, 400, "invalid_input"),
        ({"endpoint": "/v1/predict", "inputs": []}, 400, "invalid_input"),
        ({"endpoint": "/v1/rerank", "inputs": ["a"]}, 400, "unsupported_task"),
        (
            {"endpoint": "/v1/predict", "inputs": ["a"], "parameters": {"truncate": "yes"}},
            400,
            "invalid_input",
        ),
        (
            {"endpoint": "/v1/predict", "inputs": ["a"], "callback_url": "http://evil.test/x"},
            400,
            "invalid_input",
        ),
    ]
    for body, status, code in cases:
        async with s.tcp.post("/v1/jobs", json=body) as r:
            assert r.status == status, (body, await r.text())
            assert (await r.json())["error"]["code"] == code
    async with s.tcp.post("/v1/jobs", data=b"{nope") as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
    async with s.tcp.get("/v1/jobs/job_missing/results") as r:
        assert r.status == 404


async def test_the_token_guards_the_job_routes(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    s = await start_jobs(start_server, tiny_embed_dir, tmp_path, auth_token="s3cret")
    for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/files")):
        async with s.uds.request(method, path, json={}) as r:
            assert r.status == 401
    headers = {"Authorization": "Bearer s3cret"}
    async with s.uds.post(
        "/v1/jobs", json={"endpoint": "/v1/predict", "inputs": ["a"]}, headers=headers
    ) as r:
        assert r.status == 202


async def test_a_full_disk_budget_refuses_new_jobs_and_keeps_the_old(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    s = await start_jobs(start_server, tiny_embed_dir, tmp_path, SIDECAR_JOBS_MAX_BYTES="20000")
    job = await submit(s.tcp, {"endpoint": "/v1/predict", "inputs": ["kept"] * 50})
    done = await wait_status(s.tcp, job["id"])
    assert done["status"] == "completed"  # its results took the budget past full
    before = await results(s.tcp, job["id"])
    async with s.tcp.post("/v1/jobs", json={"endpoint": "/v1/predict", "inputs": ["x"]}) as r:
        assert r.status == 507
        assert "SIDECAR_JOBS_MAX_BYTES" in (await r.json())["error"]["message"]
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", io.BytesIO(b'{"custom_id": "a"}\n'), filename="in.jsonl")
    async with s.uds.post("/v1/files", data=form) as r:
        assert r.status == 507
    assert await results(s.tcp, job["id"]) == before
    async with s.health.get("/metrics") as r:
        text = await r.text()
    assert 'sidecar_jobs{status="completed"} 1.0' in text
    assert 'sidecar_job_items_total{outcome="completed"} 50.0' in text
    assert "sidecar_job_backlog_items 0.0" in text


async def test_a_large_job_never_blocks_the_event_loop(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path, slow_steps: list[str]
) -> None:
    s = await start_jobs(start_server, tiny_embed_dir, tmp_path)
    inputs = [f"text {i} " * (1 + i % 30) for i in range(100_000)]
    job = await submit(s.tcp, {"endpoint": "/v1/embeddings", "inputs": inputs})
    await progress_events(s.uds, job["id"], lambda j: j["progress"]["completed"] >= 2000)
    async with s.tcp.post("/v1/predict", json={"inputs": ["interactive"]}) as r:
        assert r.status == 200
    assert len(await results(s.tcp, job["id"], limit=10_000)) >= 2000
    async with s.tcp.post(f"/v1/jobs/{job['id']}/cancel") as r:
        assert r.status == 200
    await wait_status(s.tcp, job["id"])
    assert slow_steps == []


async def test_a_small_job_behind_a_large_one_runs_in_its_turn_not_after_it(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    long_job = ["words " * 20] * 50_000
    s, large = await start_mid_job(start_server, tiny_embed_dir, tmp_path, long_job, done=256)
    small = await submit(s.tcp, {"endpoint": "/v1/predict", "inputs": ["a", "b", "c"]})
    done = await wait_status(s.tcp, small["id"])
    assert done["status"] == "completed" and done["progress"]["completed"] == 3
    async with s.tcp.get(f"/v1/jobs/{large['id']}") as r:
        running = await r.json()
    # The small job waited for one turn of the large one (8 micro-batches of 256), not for all
    # of it; both were running at once.
    assert running["status"] == "running"
    assert running["progress"]["completed"] < 50_000
    assert running["estimated_completion"] is not None
    async with s.tcp.post(f"/v1/jobs/{large['id']}/cancel") as r:
        assert r.status == 200
    assert (await wait_status(s.tcp, large["id"]))["status"] == "cancelled"


async def test_jobs_stopped_mid_turn_resume_in_turns_after_a_restart(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path
) -> None:
    first = await start_jobs(start_server, tiny_embed_dir, tmp_path)
    inputs = [f"words {i} " * (1 + i % 4) for i in range(6000)]
    jobs = [await submit(first.tcp, {"endpoint": "/v1/predict", "inputs": inputs}) for _ in "ab"]
    await progress_events(first.tcp, jobs[1]["id"], lambda j: j["progress"]["completed"] > 0)
    await first.server.stop()  # both running, neither done: their micro-batches in flight drop
    second = await start_jobs(start_server, tiny_embed_dir, tmp_path)
    for job in jobs:
        done = await wait_status(second.tcp, job["id"], timeout_s=120)
        assert done["status"] == "completed"
        assert done["progress"] == {"completed": 6000, "failed": 0, "total": 6000}
        indices = []
        for offset in range(0, 6000, 1000):  # pages of 1 000 lines
            page = await results(second.tcp, job["id"], offset=offset, limit=1000)
            indices += [line["index"] for line in page]
        assert indices == list(range(6000))  # each exactly once, in order
