"""Nothing blocks the event loop: every callback the loop runs is timed in the loop thread's own
CPU time, so work done on the loop shows however busy the machine is, and a loop that merely
waited for the GIL or for a core (a shared 2-core machine under load) does not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.sidecar.conftest import StartServer

# Forward passes of 32 x 256 tokens take far more CPU time than this on any CPU we run on, and
# the loop thread does its share of the work of a forward pass it calls; a callback's own
# bookkeeping stays far below it.
SLOW_CPU_S = 0.2
# Beside the CPU time, a step that holds the loop this long in wall time is reported whatever
# it did (a blocking wait on the loop uses no CPU); scheduling noise stays well below it.
SLOW_WALL_S = 1.5


@pytest.fixture
def slow_steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every loop callback that took more than SLOW_CPU_S of the loop thread's CPU time or
    more than SLOW_WALL_S of wall time, described."""
    slow: list[str] = []
    run = asyncio.events.Handle._run

    def timed(handle: asyncio.events.Handle) -> None:
        cpu, wall = time.thread_time(), time.perf_counter()
        run(handle)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        if cpu > SLOW_CPU_S or wall > SLOW_WALL_S:
            slow.append(f"{handle!r}: {cpu:.3f} s CPU, {wall:.3f} s wall")

    monkeypatch.setattr(asyncio.events.Handle, "_run", timed)
    yield slow


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def test_the_detector_sees_work_on_the_loop(slow_steps: list[str]) -> None:
    asyncio.get_running_loop().call_soon(burn, 2 * SLOW_CPU_S)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(slow_steps) == 1 and "burn" in slow_steps[0]


async def test_no_blocking_call_on_the_loop(
    start_server: StartServer, slow_steps: list[str]
) -> None:
    s = await start_server(None, SIDECAR_WARMUP="true", SIDECAR_BATCH_MAX_SIZE="32")
    long_text = "a fairly long sentence about serving models next to apps " * 40
    huge_text = "tokenizing this takes a while " * 14000
    slow_steps.clear()
    started = time.perf_counter()
    bodies = [{"inputs": [long_text] * 32, "parameters": {"truncate": True}}] * 2
    bodies.append({"inputs": [huge_text], "parameters": {"truncate": True}})
    requests = [s.tcp.post("/v1/predict", json=body) for body in bodies]
    for response in await asyncio.gather(*requests):
        assert response.status == 200
        await response.read()
    elapsed = time.perf_counter() - started
    assert elapsed > SLOW_CPU_S  # the work was big enough to be caught
    assert slow_steps == []
