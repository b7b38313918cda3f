"""Job callbacks to a real local receiver: signed per Standard Webhooks, retried, not redirected."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from sidecar.errors import ConfigError
from sidecar.jobs_settings import JobsSettings
from tests.sidecar.conftest import Running, StartServer
from tests.sidecar.test_jobs import submit, wait_status


@dataclass
class Receiver:
    """A webhook receiver on a real port: what it got, and what it answers."""

    port: int
    hits: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    answer: Callable[[web.Request], web.StreamResponse] = lambda _: web.Response(status=204)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append((request.path, dict(request.headers), await request.read()))
        self.arrived.set()
        return self.answer(request)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def receiver() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(port: int | None = None) -> Receiver:
        received = Receiver(port or free_port())
        app = web.Application()
        app.router.add_post("/{tail:.*}", received.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", received.port).start()
        runners.append(runner)
        return received

    yield start
    for runner in runners:
        await runner.cleanup()


def verify(key: bytes, headers: dict[str, str], body: bytes) -> None:
    """Standard Webhooks verification, written from the specification, and by the reference
    library a receiver uses (`standardwebhooks`, which also bounds the timestamp's age)."""
    message_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert abs(time.time() - int(timestamp)) < 300
    signed = f"{message_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    versions = dict(part.split(",", 1) for part in headers["webhook-signature"].split(" "))
    assert hmac.compare_digest(versions["v1"], expected)
    secret = "whsec_" + base64.b64encode(key).decode()
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


async def start_with_callbacks(
    start_server: StartServer, model: Path, tmp_path: Path, origin: str
) -> tuple[Running, bytes]:
    key = secrets.token_bytes(32)
    secret = tmp_path / "secret"
    secret.write_text("whsec_" + base64.b64encode(key).decode())
    s = await start_server(
        model,
        SIDECAR_JOBS_DIR=str(tmp_path / "jobs"),
        SIDECAR_JOB_CALLBACK_ALLOW=origin,
        SIDECAR_JOB_CALLBACK_SECRET_FILE=str(secret),
    )
    return s, key


async def test_a_callback_arrives_signed_and_verifiable(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path, receiver: Any
) -> None:
    hook = await receiver()
    s, key = await start_with_callbacks(start_server, tiny_embed_dir, tmp_path, hook.origin)
    job = await submit(
        s.tcp,
        {"endpoint": "/v1/predict", "inputs": ["a", "b"], "callback_url": f"{hook.origin}/hook"},
    )
    await wait_status(s.tcp, job["id"])
    async with asyncio.timeout(10):
        await hook.arrived.wait()
    [(path, headers, body)] = hook.hits
    assert path == "/hook"
    verify(key, headers, body)
    event = json.loads(body)
    assert event["type"] == "job.completed"
    assert event["data"]["id"] == job["id"]
    assert event["data"]["progress"] == {"completed": 2, "failed": 0, "total": 2}
    with pytest.raises(AssertionError):  # a body changed in transit does not verify
        verify(key, headers, body.replace(b"completed", b"failed!!!"))
    async with s.tcp.post(
        "/v1/jobs",
        json={"endpoint": "/v1/predict", "inputs": ["a"], "callback_url": "http://127.0.0.2:1/x"},
    ) as r:
        assert r.status == 400


async def test_a_receiver_that_is_down_gets_retries_and_the_job_completes(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path, receiver: Any
) -> None:
    port = free_port()  # nothing listens there yet
    origin = f"http://127.0.0.1:{port}"
    s, key = await start_with_callbacks(start_server, tiny_embed_dir, tmp_path, origin)
    job = await submit(
        s.tcp, {"endpoint": "/v1/predict", "inputs": ["a"], "callback_url": f"{origin}/late"}
    )
    done = await wait_status(s.tcp, job["id"])
    assert done["status"] == "completed"  # the callback never held the job
    hook = await receiver(port)  # the receiver comes up: a retry reaches it
    async with asyncio.timeout(15):
        await hook.arrived.wait()
    [(_, headers, body)] = hook.hits
    verify(key, headers, body)


async def test_redirects_are_not_followed(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path, receiver: Any
) -> None:
    hook = await receiver()
    hook.answer = lambda request: web.Response(status=307, headers={"Location": "/elsewhere"})
    s, _ = await start_with_callbacks(start_server, tiny_embed_dir, tmp_path, hook.origin)
    job = await submit(
        s.tcp, {"endpoint": "/v1/predict", "inputs": ["a"], "callback_url": f"{hook.origin}/h"}
    )
    await wait_status(s.tcp, job["id"])
    async with asyncio.timeout(10):
        while len(hook.hits) < 2:  # the first attempt, then a retry after a second
            hook.arrived.clear()
            await hook.arrived.wait()
    assert [path for path, _, _ in hook.hits] == ["/h", "/h"]
    assert hook.hits[0][1]["webhook-id"] == hook.hits[1][1]["webhook-id"]


def test_callbacks_need_a_secret() -> None:
    with pytest.raises(ConfigError, match="SIDECAR_JOB_CALLBACK_SECRET_FILE"):
        JobsSettings.from_env({"SIDECAR_JOB_CALLBACK_ALLOW": "http://127.0.0.1:9"})


async def test_a_callback_owed_at_shutdown_is_sent_after_the_restart(
    start_server: StartServer, tiny_embed_dir: Path, tmp_path: Path, receiver: Any
) -> None:
    hook = await receiver()
    hook.answer = lambda request: web.Response(status=503)  # down for the first server's life
    first, _ = await start_with_callbacks(start_server, tiny_embed_dir, tmp_path, hook.origin)
    job = await submit(
        first.tcp, {"endpoint": "/v1/predict", "inputs": ["a"], "callback_url": f"{hook.origin}/h"}
    )
    assert (await wait_status(first.tcp, job["id"]))["status"] == "completed"
    async with asyncio.timeout(10):
        await hook.arrived.wait()  # the first attempt failed; its retry waits a second
    await first.server.stop()
    hook.answer = lambda request: web.Response(status=204)
    hook.arrived.clear()
    second, key = await start_with_callbacks(start_server, tiny_embed_dir, tmp_path, hook.origin)
    async with asyncio.timeout(10):
        await hook.arrived.wait()
    (_, failed, _), (path, headers, body) = hook.hits
    assert path == "/h"
    verify(key, headers, body)
    assert json.loads(body)["data"]["id"] == job["id"]
    assert headers["webhook-id"] == failed["webhook-id"]  # the same message: a receiver can tell
    # Delivered: settled in the store, so a further restart sends nothing.
    await asyncio.sleep(0.2)
    await second.server.stop()
    await start_with_callbacks(start_server, tiny_embed_dir, tmp_path, hook.origin)
    await asyncio.sleep(0.5)
    assert len(hook.hits) == 2
