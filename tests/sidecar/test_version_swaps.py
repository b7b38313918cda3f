"""Acceptance: 10 consecutive swaps between two real versions under continuous open-loop load
at half saturation, over TCP and the socket, against the real `python -m sidecar serve` process.

Every response is 2xx; its X-Model-Version and body model_version agree with the version whose
output it carries (checked against each version's own output, computed in this process); a
request sent after a swap's admin call returned reports the new version (only requests admitted
before a flip report the old one). Each swap is a whole cycle: the new version loads and warms
beside the old, routing flips, the old one drains and is freed (resident: 1).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.sidecar.test_process import Process, base_env, spawn, wait_ready
from tests.sidecar.versioned import (
    admin_session,
    expected_vectors,
    make_root,
    states,
    until,
)
from tests.snapshots import make_bert_snapshot

TEXTS = [f"request number {i} asks the served version for its embedding" for i in range(8)]
NUM_SWAPS = 10


@dataclass
class Answer:
    sent: float
    status: int
    header: str | None
    body_version: str | None
    text: int
    vector: np.ndarray | None


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    staging = tmp_path_factory.mktemp("staging")
    # Larger than the other tests' (so a load takes real time) and different weights each.
    return {
        name: make_bert_snapshot(staging / name, hidden_size=128, num_layers=4, seed=seed)
        for name, seed in (("7", 7), ("8", 8))
    }


async def test_ten_swaps_under_load_fail_no_request(
    processes: list[Process], snapshots: dict[str, Path], socket_dir: str, tmp_path: Path
) -> None:
    root = make_root(tmp_path, snapshots, {"stable": "7"})
    expected = {name: expected_vectors(path, TEXTS) for name, path in snapshots.items()}
    admin_path = f"{socket_dir}/admin.sock"
    env = base_env(
        socket_dir, SIDECAR_MODEL=str(root), SIDECAR_ADMIN_UDS=admin_path,
        SIDECAR_MODEL_POLL_S="0", SIDECAR_LOG_LEVEL="info",
    )  # fmt: skip
    process = await spawn(env, tmp_path / "log", processes)
    await wait_ready(process)
    tcp = aiohttp.ClientSession(f"http://127.0.0.1:{process.port}")
    uds = aiohttp.ClientSession(
        "http://localhost", connector=aiohttp.UnixConnector(path=process.socket_path)
    )
    answers: list[Answer] = []

    async def one(session: aiohttp.ClientSession, text: int) -> None:
        sent = time.monotonic()
        async with session.post("/v1/predict", json={"inputs": [TEXTS[text]]}) as r:
            body = await r.json()
            vector = None
            if r.status == 200:
                vector = np.asarray(body["results"][0]["embedding"], dtype=np.float32)
            version = body.get("model_version")
            answers.append(Answer(sent, r.status, r.headers.get("X-Model-Version"), version,
                                  text, vector))  # fmt: skip

    try:
        # Saturation: a closed loop of 32 clients for two seconds.
        started, count = time.monotonic(), 0

        async def client() -> None:
            nonlocal count
            while time.monotonic() - started < 2.0:
                await one(tcp, count % len(TEXTS))
                count += 1

        await asyncio.gather(*(client() for _ in range(32)))
        saturation = count / (time.monotonic() - started)
        answers.clear()
        rate = saturation / 2
        stop = asyncio.Event()

        async def load() -> None:
            rng = random.Random(12)
            pending: set[asyncio.Task[None]] = set()
            due = time.monotonic()
            while not stop.is_set():
                due += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                session = tcp if rng.random() < 0.5 else uds
                task = asyncio.create_task(one(session, rng.randrange(len(TEXTS))))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)

        loading = asyncio.create_task(load())
        windows: list[tuple[float, float, str]] = []  # (admin call began, returned, new stable)
        async with admin_session(admin_path) as admin:
            await asyncio.sleep(0.5)
            for swap in range(NUM_SWAPS):
                target, old = ("8", "7") if swap % 2 == 0 else ("7", "8")
                began = time.monotonic()
                async with admin.put("/admin/v1/models/m/traffic", json={"stable": target}) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["traffic"]["stable"] == target
                windows.append((began, time.monotonic(), target))

                async def drained(old: str = old) -> bool:
                    return (await states(admin))[old]["state"] == "unloaded"

                await until(drained, timeout_s=60)  # the old one drained and was freed
                await asyncio.sleep(0.3)
        stop.set()
        await loading
    finally:
        await tcp.close()
        await uds.close()
        process.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.proc.wait(), 60)

    assert len(answers) > 200, len(answers)
    failed = [a for a in answers if a.status != 200]
    assert failed == [], [(a.status, a.header) for a in failed[:5]]
    for a in answers:
        assert a.header == a.body_version, a
        assert a.header is not None
        np.testing.assert_allclose(a.vector, expected[a.header][a.text], atol=1e-4)
    # After a swap's call returned and before the next began, only the new version answers.
    bounds = [*windows[1:], (float("inf"), float("inf"), "")]
    for (_, returned, target), (next_began, _, _) in zip(windows, bounds, strict=True):
        after = [a.header for a in answers if returned <= a.sent < next_began]
        assert after and set(after) == {target}, (target, set(after))
    assert {a.header for a in answers if a.sent < windows[0][0]} == {"7"}
    log = process.log_text()
    assert log.count('"swap: stable') == NUM_SWAPS or log.count("swap: stable") == NUM_SWAPS
