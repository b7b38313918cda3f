"""Nothing blocks the event loop: asyncio's debug mode reports every slow callback."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from tests.sidecar.conftest import StartServer

# Forward passes of 32 x 256 tokens and tokenizing a 400 kB text each take far longer than this
# on the CPU, so either one on the loop would show; scheduling noise on a busy 2-core machine
# (the loop thread shares the cores with torch's threads) stays well below it.
SLOW_S = 0.25


async def test_no_blocking_call_on_the_loop(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_S
    try:
        s = await start_server(None, SIDECAR_WARMUP="true", SIDECAR_BATCH_MAX_SIZE="32")
        long_text = "a fairly long sentence about serving models next to apps " * 40
        huge_text = "tokenizing this takes a while " * 14000
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            started = time.perf_counter()
            bodies = [{"inputs": [long_text] * 32, "parameters": {"truncate": True}}] * 2
            bodies.append({"inputs": [huge_text], "parameters": {"truncate": True}})
            requests = [s.tcp.post("/v1/predict", json=body) for body in bodies]
            for response in await asyncio.gather(*requests):
                assert response.status == 200
                await response.read()
            elapsed = time.perf_counter() - started
    finally:
        loop.set_debug(False)
    assert elapsed > SLOW_S  # the work was big enough to be caught
    slow = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert slow == []
