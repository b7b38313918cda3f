"""Shared benchmark parts: real sentences, a served sidecar, open- and closed-loop load."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
_DOC_MODULES = (
    "asyncio", "collections", "concurrent.futures", "contextlib", "dataclasses", "decimal",
    "email", "functools", "http.client", "itertools", "json", "logging", "os", "pathlib",
    "re", "socket", "sqlite3", "statistics", "subprocess", "tarfile", "threading", "typing",
    "unittest", "urllib.request", "zipfile",
)  # fmt: skip


def demo_model(dtype: str = "float32") -> Any:
    """The demo model in this process, on the CPU, built as the server builds it."""
    import torch

    import loaders
    from sidecar.models import LoadOptions
    from sidecar.models.families import load_model
    from sidecar.serving.loading import demo_model_path

    directory = demo_model_path()
    weights, _ = loaders.load_weights([directory / "model.safetensors"])
    return load_model(directory, weights, LoadOptions(torch.device("cpu"), getattr(torch, dtype)))


def corpus(count: int, seed: int = 7) -> list[str]:
    """`count` real English sentences of varied length (1 to 100+ words), in a fixed order.

    They come from the standard library's docstrings, so every machine with the same Python
    builds the same corpus without downloading anything.
    """
    sentences: list[str] = []
    for name in _DOC_MODULES:
        module = importlib.import_module(name)
        for _, member in inspect.getmembers(module):
            doc = inspect.getdoc(member) if callable(member) or inspect.ismodule(member) else None
            for part in re.split(r"(?<=[.!?])\s+", " ".join((doc or "").split())):
                if 3 <= len(part.split()) <= 160 and not part.startswith(">>>"):
                    sentences.append(part)
    unique = sorted(set(sentences))
    rng = random.Random(seed)
    rng.shuffle(unique)
    # Passages: join neighbours now and then, so lengths reach past 100 words as real ones do.
    out: list[str] = []
    i = 0
    while len(out) < count and i < len(unique):
        take = rng.choice((1, 1, 1, 1, 2, 3, 6))
        out.append(" ".join(unique[i : i + take]))
        i += take
    return (out * (count // max(len(out), 1) + 1))[:count]


@dataclass
class Served:
    """A `sidecar serve` subprocess and how to reach it."""

    port: int
    health_port: int
    socket_path: str
    proc: subprocess.Popen[bytes]

    def session(self, transport: str) -> tuple[aiohttp.ClientSession, str]:
        if transport == "uds":
            connector = aiohttp.UnixConnector(path=self.socket_path, limit=0)
            return aiohttp.ClientSession(connector=connector), "http://localhost"
        connector_tcp = aiohttp.TCPConnector(limit=0)
        return aiohttp.ClientSession(connector=connector_tcp), f"http://127.0.0.1:{self.port}"

    @contextlib.asynccontextmanager
    async def sessions(self) -> AsyncIterator[dict[str, tuple[aiohttp.ClientSession, str]]]:
        """A session and base URL per transport (`uds`, `tcp`), both open, closed at the end."""
        sessions = {t: self.session(t) for t in ("uds", "tcp")}
        async with contextlib.AsyncExitStack() as stack:
            for session, _ in sessions.values():
                await stack.enter_async_context(session)
            yield sessions

    async def metrics(self) -> dict[str, float]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.health_port}/metrics") as r,
        ):
            text = await r.text()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values


@contextlib.asynccontextmanager
async def serve(
    env: Mapping[str, str], socket_dir: str, *, root: Path = ROOT, name: str = "bench"
) -> AsyncIterator[Served]:
    """Start `sidecar serve` with `env` added, wait for ready, SIGTERM it at the end.

    `root`: the source tree to run (another checkout of the project, for A/B runs).
    """
    from aiohttp.test_utils import unused_port

    port, health = unused_port(), unused_port()
    socket_path = f"{socket_dir}/{name}.sock"
    full_env = {
        **os.environ,
        "SIDECAR_PORT": str(port),
        "SIDECAR_HEALTH_PORT": str(health),
        "SIDECAR_UDS": socket_path,
        "SIDECAR_LOG_LEVEL": "warning",
        **env,
    }
    # `python -m` puts `root` first on the path, ahead of the editable install of this tree.
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=full_env, cwd=root)
    served = Served(port, health, socket_path, proc)
    try:
        async with aiohttp.ClientSession() as probe:
            for _ in range(1200):
                if proc.poll() is not None:
                    raise RuntimeError(f"sidecar exited with {proc.returncode}")
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with probe.get(f"http://127.0.0.1:{health}/readyz") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


@dataclass
class LoadResult:
    """What a load run measured; failed requests are never counted as served."""

    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(len(lat) * p))] * 1000, 3) if lat else None

        return {
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "throughput_per_s": round(self.ok / self.elapsed_s, 2) if self.elapsed_s else 0.0,
            "p50_ms": pct(0.50),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
        }


def predict_bodies(texts: list[str]) -> list[dict[str, Any]]:
    """One `/v1/predict` body per text: the request shape every sidecar run sends."""
    return [{"inputs": [text], "parameters": {"truncate": True}} for text in texts]


async def _one(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], result: LoadResult
) -> None:
    result.sent += 1
    started = time.perf_counter()
    try:
        async with session.post(url, json=body) as r:
            await r.read()
            status = r.status
    except aiohttp.ClientError as exc:
        result.errors[type(exc).__name__] = result.errors.get(type(exc).__name__, 0) + 1
        return
    if status != 200:
        result.errors[str(status)] = result.errors.get(str(status), 0) + 1
        return
    result.ok += 1
    result.latencies_s.append(time.perf_counter() - started)


async def closed_loop(
    session: aiohttp.ClientSession, url: str, bodies: list[dict[str, Any]], concurrency: int
) -> LoadResult:
    """`concurrency` clients, each sending its next request when the last one is answered."""
    result = LoadResult()
    queue = list(reversed(bodies))

    async def client() -> None:
        while queue:
            await _one(session, url, queue.pop(), result)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


async def open_loop(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[dict[str, Any]],
    rate_per_s: float,
    seed: int = 1,
    into: LoadResult | None = None,
) -> LoadResult:
    """Poisson arrivals at `rate_per_s`, one request per body, whatever the server's pace.

    `into`: count into this result (to read it while the run goes on) instead of a new one.
    """
    result = into or LoadResult()
    rng = random.Random(seed)
    tasks = []
    started = time.perf_counter()
    due = started
    for body in bodies:
        due += rng.expovariate(rate_per_s)
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(session, url, body, result)))
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - started
    return result


def histogram_delta(
    before: Mapping[str, float], after: Mapping[str, float], name: str
) -> dict[str, float]:
    """Per-bucket counts of a Prometheus histogram between two scrapes (not cumulative)."""
    buckets = sorted(
        (
            (float(re.search(r'le="([^"]+)"', key).group(1)), after[key] - before.get(key, 0.0))  # type: ignore[union-attr]
            for key in after
            if key.startswith(f"{name}_bucket")
        ),
        key=lambda pair: pair[0],
    )
    counts, previous = {}, 0.0
    for bound, cumulative in buckets:
        counts[f"<={bound:g}"] = cumulative - previous
        previous = cumulative
    return counts
