"""The real process: `python -m sidecar` started, probed, drained with SIGTERM, refused bad env."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Process:
    proc: asyncio.subprocess.Process
    port: int
    health_port: int
    socket_path: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text()


def base_env(socket_dir: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(
        SIDECAR_PORT=str(unused_port()),
        SIDECAR_HEALTH_PORT=str(unused_port()),
        SIDECAR_UDS=f"{socket_dir}/sidecar.sock",
        SIDECAR_LOG_FORMAT="json",
        SIDECAR_DEVICE="cpu",  # as the in-process fixtures: CPU behaviour, on any host
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


async def spawn(env: dict[str, str], log: Path, started: list[Process]) -> Process:
    """Start the process; once it has bound its listeners (or exited), return it.

    Its ports were free when `base_env` chose them, but another process may take one before the
    child binds it: then the child exits saying so, and it is started again on new ports.
    """
    for _ in range(3):
        with log.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sidecar",
                "serve",
                env=env,
                cwd=ROOT,
                stdout=sink,
                stderr=sink,
            )
        process = Process(
            proc, int(env["SIDECAR_PORT"]), int(env["SIDECAR_HEALTH_PORT"]), env["SIDECAR_UDS"], log
        )
        started.append(process)
        deadline = time.monotonic() + 60
        while proc.returncode is None and "listening:" not in log.read_text():
            if time.monotonic() > deadline:
                raise AssertionError("the process never bound its listeners:\n" + log.read_text())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.05)
        if proc.returncode is None or "Address already in use" not in log.read_text():
            return process
        env = env | {"SIDECAR_PORT": str(unused_port()), "SIDECAR_HEALTH_PORT": str(unused_port())}
    raise AssertionError("no free ports after three tries")


async def wait_ready(process: Process, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert process.proc.returncode is None, process.log_text()
            try:
                async with session.get(f"http://127.0.0.1:{process.health_port}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("not ready in time:\n" + process.log_text())


async def test_demo_model_ready_over_tcp_and_socket(
    processes: list[Process], socket_dir: str, tmp_path: Path
) -> None:
    process = await spawn(base_env(socket_dir), tmp_path / "log", processes)
    await wait_ready(process)
    connector = aiohttp.UnixConnector(path=process.socket_path)
    async with aiohttp.ClientSession() as tcp, aiohttp.ClientSession(connector=connector) as uds:
        for route in ("/readyz", "/v1/models"):
            async with (
                tcp.get(f"http://127.0.0.1:{process.port}{route}") as a,
                uds.get(f"http://localhost{route}") as b,
            ):
                assert a.status == b.status == 200
                assert await a.json() == await b.json()
        async with uds.post("http://localhost/v1/predict", json={"inputs": ["hi"]}) as r:
            assert r.status == 200
            body = await r.json()
    assert body["model"] == "all-MiniLM-L6-v2"
    assert len(body["results"][0]["embedding"]) == 384
    process.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.proc.wait(), 30) == 0
    assert not os.path.exists(process.socket_path)
    assert '"request_id"' in process.log_text()  # one access line per request, with its id


async def test_sigterm_drains_in_flight_requests(
    processes: list[Process], socket_dir: str, tmp_path: Path, tiny_embed_dir: Path
) -> None:
    # Requests wait in the queue for the (fixed) window, so they are in flight at SIGTERM.
    env = base_env(
        socket_dir,
        SIDECAR_MODEL=str(tiny_embed_dir),
        SIDECAR_BATCH_WINDOW_MS="1000",
        SIDECAR_BATCH_MAX_SIZE="64",
        SIDECAR_BATCH_MIN_SIZE="64",
        SIDECAR_BATCH_ADAPTIVE="false",
    )
    process = await spawn(env, tmp_path / "log", processes)
    await wait_ready(process)
    base = f"http://127.0.0.1:{process.port}"
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> int:
            async with session.post(f"{base}/v1/predict", json={"inputs": [f"text {i}"]}) as r:
                await r.read()
                return r.status

        in_flight = [asyncio.create_task(one(i)) for i in range(50)]
        # SIGTERM only once all 50 are queued (not after a fixed sleep: a slow machine may not
        # have sent them yet, and the drain would find nothing in flight).
        for _ in range(500):
            async with session.get(f"http://127.0.0.1:{process.health_port}/metrics") as r:
                if "sidecar_queue_depth 50.0" in await r.text():
                    break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the 50 requests never all reached the queue")
        process.proc.send_signal(signal.SIGTERM)
        for _ in range(100):
            async with session.get(f"http://127.0.0.1:{process.health_port}/readyz") as r:
                if r.status == 503:
                    break
            await asyncio.sleep(0.01)
        async with session.post(f"{base}/v1/predict", json={"inputs": ["late"]}) as r:
            assert r.status == 503
            assert (await r.json())["error"]["message"] == "the server is draining"
        assert await asyncio.gather(*in_flight) == [200] * 50
    assert await asyncio.wait_for(process.proc.wait(), 30) == 0
    assert not os.path.exists(process.socket_path)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SIDECAR_BATCH_WINDOW_MS", "5000"),
        ("SIDECAR_BATCH_MAX_SIZE", "zero"),
        ("SIDECAR_DEVICE", "tpu"),
        ("SIDECAR_DTYPE", "float8"),
        ("SIDECAR_PORT", "70000"),
        ("SIDECAR_UDS_MODE", "rw-rw----"),
        ("SIDECAR_WARMUP", "maybe"),
        ("SIDECAR_TASK", "generate-images"),
        ("SIDECAR_DRAIN_TIMEOUT_S", "nan"),
        ("SIDECAR_AUTH_TOKEN_FILE", "/nonexistent/token"),
        ("SIDECAR_MODEL_SHA256", "abc123"),
        ("SIDECAR_LOAD_MODE", "lazy"),
        ("SIDECAR_CACHE_MAX_ITEMS", "-1"),
    ],
)
def test_invalid_env_exits_2_naming_the_variable(
    variable: str, value: str, socket_dir: str
) -> None:
    env = base_env(socket_dir, **{variable: value})
    result = subprocess.run(
        [sys.executable, "-m", "sidecar"], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and value in lines[0], result.stderr


async def test_corrupt_weights_stop_start_up(
    processes: list[Process], socket_dir: str, tmp_path: Path, tiny_embed_dir: Path
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_embed_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    process = await spawn(
        base_env(socket_dir, SIDECAR_MODEL=str(broken)), tmp_path / "log", processes
    )
    assert await asyncio.wait_for(process.proc.wait(), 60) == 1
    log = process.log_text()
    assert "model.safetensors" in log and "start-up failed" in log


async def test_refuses_to_replace_a_file_that_is_not_a_socket(
    processes: list[Process], socket_dir: str, tmp_path: Path, tiny_embed_dir: Path
) -> None:
    env = base_env(socket_dir, SIDECAR_MODEL=str(tiny_embed_dir))
    Path(env["SIDECAR_UDS"]).write_text("precious")
    process = await spawn(env, tmp_path / "log", processes)
    assert await asyncio.wait_for(process.proc.wait(), 60) == 1
    assert Path(env["SIDECAR_UDS"]).read_text() == "precious"
    assert "not a socket" in process.log_text()


async def test_a_jobs_dir_that_cannot_hold_the_store_stops_start_up_naming_it(
    processes: list[Process], socket_dir: str, tmp_path: Path, tiny_embed_dir: Path
) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    env = base_env(socket_dir, SIDECAR_MODEL=str(tiny_embed_dir), SIDECAR_JOBS_DIR=str(taken))
    process = await spawn(env, tmp_path / "log", processes)
    assert await asyncio.wait_for(process.proc.wait(), 60) == 1
    log = process.log_text()
    assert f"SIDECAR_JOBS_DIR={taken}: the job store cannot be opened there" in log
    assert "Traceback" not in log
