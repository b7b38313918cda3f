"""Acceptance: after a version is unloaded, the process's memory returns to where it was before
it loaded (within 10%); on a GPU the device memory too (tests/sidecar/test_gpu.py's marker).

The CPU test measures a server process of its own: the test process has run other tests first,
and a version's tensors may land in heap pages they left resident, where a load would not show."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
import torch

from tests.sidecar.conftest import DEMO_DIR, StartServer
from tests.sidecar.test_process import Process, base_env, spawn, wait_ready
from tests.sidecar.versioned import admin_session, make_root


def rss_bytes(pid: int) -> int:
    """A process's resident memory, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def demo_root(tmp_path: Path) -> Path:
    """The demo model (90 MB of weights) as two versions, a and b; a stable."""
    return make_root(tmp_path, {"a": DEMO_DIR, "b": DEMO_DIR}, {"stable": "a"})


async def test_unloading_a_version_gives_its_memory_back(
    processes: list[Process], tmp_path: Path, socket_dir: str
) -> None:
    admin_path = f"{socket_dir}/admin.sock"
    env = base_env(
        socket_dir, SIDECAR_MODEL=str(demo_root(tmp_path)), SIDECAR_MODEL_POLL_S="0",
        SIDECAR_ADMIN_UDS=admin_path, SIDECAR_WARMUP="false",
    )  # fmt: skip
    process = await spawn(env, tmp_path / "log", processes)
    await wait_ready(process)
    pid = process.proc.pid
    body = {"inputs": [f"sentence {i} about memory" for i in range(16)]}

    async def serve(tcp: aiohttp.ClientSession, pin: str) -> None:
        for _ in range(5):
            async with tcp.post("/v1/predict", json=body, headers={"X-Model-Version": pin}) as r:
                assert r.status == 200
                assert r.headers["X-Model-Version"] == pin

    async with aiohttp.ClientSession(f"http://127.0.0.1:{process.port}") as tcp:
        await serve(tcp, "a")
        before = rss_bytes(pid)
        async with admin_session(admin_path) as admin:
            async with admin.post("/admin/v1/models/m/versions/b/load") as r:
                assert (await r.json())["version"]["state"] == "ready"
            await serve(tcp, "b")
            loaded = rss_bytes(pid)
            async with admin.post("/admin/v1/models/m/versions/b/unload") as r:
                assert (await r.json())["version"]["state"] == "unloaded"
        await serve(tcp, "a")
        after = rss_bytes(pid)
    assert loaded - before > 50 << 20, (before, loaded)  # b really was resident
    assert abs(after - before) <= 0.1 * before, (before, loaded, after)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_unloading_a_version_gives_its_device_memory_back(
    start_server: StartServer, tmp_path: Path, socket_dir: str
) -> None:
    admin_path = f"{socket_dir}/admin.sock"
    await start_server(
        demo_root(tmp_path), SIDECAR_MODEL_POLL_S="0", SIDECAR_ADMIN_UDS=admin_path,
        SIDECAR_DEVICE="cuda",
    )  # fmt: skip
    before = torch.cuda.memory_reserved()
    async with admin_session(admin_path) as admin:
        async with admin.post("/admin/v1/models/m/versions/b/load") as r:
            assert (await r.json())["version"]["state"] == "ready"
        loaded = torch.cuda.memory_reserved()
        async with admin.post("/admin/v1/models/m/versions/b/unload") as r:
            assert (await r.json())["version"]["state"] == "unloaded"
    after = torch.cuda.memory_reserved()
    assert loaded - before > 40 << 20, (before, loaded)
    assert abs(after - before) <= 0.1 * before, (before, loaded, after)
