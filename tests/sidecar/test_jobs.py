"""The native job API over real servers (TCP and the Unix socket), on real models."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.sidecar.conftest import Running, StartServer

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
        return [json.loads(line) for line in (await r.read()).splitlines()]


async def submit(session: aiohttp.ClientSession, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post("/v1/jobs", json=body) as r:
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
