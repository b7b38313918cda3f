"""A swap blocks nothing: loading, warming, flipping, draining and freeing a version leave the
event loop free (timed in the loop thread's CPU time, as tests/sidecar/test_event_loop.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from loaders import DesiredState
from tests.sidecar.conftest import DEMO_DIR, StartServer
from tests.sidecar.test_event_loop import slow_steps
from tests.sidecar.versioned import make_root

__all__ = ["slow_steps"]  # the fixture, used here


async def test_swaps_leave_the_loop_free(
    start_server: StartServer, slow_steps: list[str], tmp_path: Path
) -> None:
    # 90 MB each: copied off the loop, which the test times from its start.
    versions = {"1": DEMO_DIR, "2": DEMO_DIR}
    root = await asyncio.to_thread(make_root, tmp_path, versions, {"stable": "1"})
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0", SIDECAR_WARMUP="true")
    registry = s.service.registry
    stop = asyncio.Event()
    served: list[str] = []

    async def load() -> None:
        while not stop.is_set():
            async with s.uds.post("/v1/predict", json={"inputs": ["a sentence"] * 4}) as r:
                assert r.status == 200, await r.text()
                served.append(r.headers["X-Model-Version"])

    clients = [asyncio.create_task(load()) for _ in range(4)]
    for stable in ("2", "1", "2"):
        await registry.apply(DesiredState(stable=stable))
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*clients)
    assert set(served) == {"1", "2"}
    assert slow_steps == []
