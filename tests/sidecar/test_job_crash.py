"""Acceptance 2 of jobs: `kill -9` of a real `python -m sidecar serve` mid-batch, a restart on
the same directory, and an output holding every custom_id exactly once, equal to a run that was
never interrupted. And a second process on the same directory, which waits for the first's lock
and takes its jobs over when it dies."""

from __future__ import annotations

import asyncio
import io
import json
import random
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.sidecar.test_process import Process, base_env, spawn, wait_ready

LINES = 50_000


def requests(count: int) -> bytes:
    rng = random.Random(13)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    out = io.BytesIO()
    for i in range(count):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 24)))
        line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/embeddings",
                "body": {"input": text}}  # fmt: skip
        out.write(json.dumps(line).encode() + b"\n")
    return out.getvalue()


async def create_batch(session: aiohttp.ClientSession, base: str, data: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", io.BytesIO(data), filename="requests.jsonl")
    async with session.post(f"{base}/v1/files", data=form) as r:
        assert r.status == 200, await r.text()
        file_id = (await r.json())["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}
    async with session.post(f"{base}/v1/batches", json=body) as r:
        assert r.status == 200, await r.text()
        batch_id: str = (await r.json())["id"]
    return batch_id


async def batch(session: aiohttp.ClientSession, base: str, batch_id: str) -> dict[str, Any]:
    async with session.get(f"{base}/v1/batches/{batch_id}") as r:
        assert r.status == 200
        result: dict[str, Any] = await r.json()
        return result


async def wait_for(
    session: aiohttp.ClientSession, base: str, batch_id: str, *, completed: int | None = None
) -> dict[str, Any]:
    """Poll the batch until `completed` lines ran, or (None) until it ends."""
    async with asyncio.timeout(600):
        while True:
            current = await batch(session, base, batch_id)
            if current["status"] in ("completed", "failed", "cancelled") or (
                completed is not None and current["request_counts"]["completed"] >= completed
            ):
                return current
            await asyncio.sleep(0.05)


async def output(session: aiohttp.ClientSession, base: str, done: dict[str, Any]) -> list[Any]:
    async with session.get(f"{base}/v1/files/{done['output_file_id']}/content") as r:
        assert r.status == 200
        return [json.loads(line) for line in (await r.read()).splitlines()]


async def start(tmp_path: Path, socket_dir: str, jobs: Path, model: Path, name: str,
                started: list[Process]) -> Process:  # fmt: skip
    env = base_env(socket_dir, SIDECAR_JOBS_DIR=str(jobs), SIDECAR_MODEL=str(model),
                   SIDECAR_WARMUP="false")  # fmt: skip
    process = await spawn(env, tmp_path / f"{name}.log", started)
    await wait_ready(process)
    return process


@pytest.mark.slow
async def test_kill_9_mid_batch_then_restart_holds_every_custom_id_once(
    processes: list[Process], socket_dir: str, tmp_path: Path, tiny_embed_dir: Path
) -> None:
    jobs = tmp_path / "jobs"
    data = requests(LINES)
    first = await start(tmp_path, socket_dir, jobs, tiny_embed_dir, "first", processes)
    async with aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{first.port}"
        batch_id = await create_batch(session, base, data)
        running = await wait_for(session, base, batch_id, completed=LINES // 5)
        assert running["status"] == "in_progress", running
        first.proc.kill()  # SIGKILL: no drain, no goodbye
        assert await first.proc.wait() == -9

        second = await start(tmp_path, socket_dir, jobs, tiny_embed_dir, "second", processes)
        base = f"http://127.0.0.1:{second.port}"
        resumed = await batch(session, base, batch_id)
        assert resumed["request_counts"]["completed"] >= running["request_counts"]["completed"]
        done = await wait_for(session, base, batch_id)
        assert done["status"] == "completed", done
        assert done["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
        lines = await output(session, base, done)
        assert len(lines) == LINES
        assert [line["custom_id"] for line in lines] == [f"c{i}" for i in range(LINES)]

        # The same file again, never interrupted: the same output.
        again = await wait_for(session, base, await create_batch(session, base, data))
        reference = await output(session, base, again)
    second.proc.send_signal(signal.SIGTERM)  # and a drain with jobs on ends cleanly
    assert await asyncio.wait_for(second.proc.wait(), 60) == 0
    assert len(reference) == LINES
    for got, want in zip(lines, reference, strict=True):
        assert got["custom_id"] == want["custom_id"]
        assert got["id"] != want["id"]  # another batch, other line ids
        g, w = got["response"]["body"]["data"][0], want["response"]["body"]["data"][0]
        assert g["embedding"] == pytest.approx(w["embedding"], abs=1e-5)


async def test_a_second_process_on_the_directory_takes_over_when_the_first_is_killed(
    processes: list[Process], socket_dir: str, tmp_path: Path, tiny_embed_dir: Path
) -> None:
    jobs, lines = tmp_path / "jobs", 20_000
    first = await start(tmp_path, socket_dir, jobs, tiny_embed_dir, "first", processes)
    second_dir = tempfile.mkdtemp(prefix="sc-", dir="/tmp")  # its own socket, same jobs dir
    try:
        second = await start(tmp_path, second_dir, jobs, tiny_embed_dir, "second", processes)
        async with aiohttp.ClientSession() as session:
            one, two = (f"http://127.0.0.1:{p.port}" for p in (first, second))
            batch_id = await create_batch(session, one, requests(lines))
            running = await wait_for(session, one, batch_id, completed=1)
            async with session.get(f"{two}/v1/batches/{batch_id}") as r:
                assert (r.status, (await r.json())["error"]["code"]) == (503, "jobs_locked")
            async with session.post(f"{two}/v1/embeddings", json={"input": "still served"}) as r:
                assert r.status == 200
            first.proc.kill()  # the lock goes with the process, however it ends
            assert await first.proc.wait() == -9
            async with asyncio.timeout(30):
                while True:
                    async with session.get(f"{two}/v1/batches/{batch_id}") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.1)
            done = await wait_for(session, two, batch_id)
            assert running["status"] == "in_progress" and done["status"] == "completed", done
            assert done["request_counts"] == {"total": lines, "completed": lines, "failed": 0}
            got = await output(session, two, done)
        assert [line["custom_id"] for line in got] == [f"c{i}" for i in range(lines)]
        assert "another sidecar process holds the jobs directory" in second.log_text()
    finally:
        shutil.rmtree(second_dir, ignore_errors=True)
