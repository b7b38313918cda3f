"""Peer servers for benchmarks.serve: the same model and load, served by other frameworks.

Each peer runs from its own virtual environment under .bench-venvs/<peer> (made by
benchmarks/peers/setup.sh, torch pinned to the sidecar's build) and serves the demo
all-MiniLM-L6-v2 snapshot from its local directory. A small adapter per peer turns one corpus
sentence into that peer's request body; the load loops are benchmarks.harness's own (same
closed-loop clients, same Poisson arrivals, same result counting).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.harness import ROOT, closed_loop, open_loop

VENVS = ROOT / ".bench-venvs"
HERE = Path(__file__).resolve().parent
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    "LITSERVE_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


@dataclass(frozen=True)
class Peer:
    name: str
    path: str  # request route
    health: str  # GET route answering 200 when ready
    body: Callable[[str], dict[str, Any]]  # one sentence -> request JSON
    embedding: Callable[[Any], list[float]]  # response JSON -> the one embedding
    command: Callable[[Path, int, dict[str, Any]], list[str]]  # (model, port, settings) -> argv
    sweep: tuple[dict[str, Any], ...]  # settings tried by --peer-sweep
    default: dict[str, Any]  # settings used without a sweep (best found on the dev machine)
    # How to ask it to stop; None: SIGTERM to its whole process group. Either way the group is
    # SIGKILLed if it has not exited after 30 s, and whatever is left of it once it has.
    stop: Callable[[subprocess.Popen], None] | None = None
    # Its working directory (default: its venv folder).
    cwd: Path | None = None


def _signal_leader(proc: subprocess.Popen) -> None:
    # Ray's gcs_server and raylet share the server's process group: a group SIGTERM would stop
    # them under Serve's feet (serve.shutdown() then hangs on the lost GCS). The server shuts
    # Serve and Ray down itself on SIGTERM.
    proc.send_signal(signal.SIGTERM)


def _python(peer: str) -> str:
    return str(VENVS / peer / "bin" / "python")


def _litserve_command(model: Path, port: int, s: dict[str, Any]) -> list[str]:
    return [
        _python("litserve"), str(HERE / "litserve_server.py"), "--model", str(model),
        "--port", str(port), "--max-batch-size", str(s["max_batch_size"]),
        "--batch-timeout", str(s["batch_timeout"]), "--dtype", s.get("dtype", "float32"),
    ]  # fmt: skip


def _infinity_command(model: Path, port: int, s: dict[str, Any]) -> list[str]:
    dtype = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
    return [
        str(VENVS / "infinity" / "bin" / "infinity_emb"), "v2", "--engine", "torch",
        "--model-id", str(model), "--served-model-name", "minilm", "--device", "cpu",
        "--port", str(port), "--batch-size", str(s["batch_size"]),
        "--dtype", dtype[s.get("dtype", "float32")], "--no-bettertransformer",
        "--no-model-warmup", "--log-level", "warning",
    ]  # fmt: skip


def _infinity_onnx_command(model: Path, port: int, s: dict[str, Any]) -> list[str]:
    # Its ONNX Runtime engine (`optimum`) needs an ONNX graph beside the tokenizer: setup.sh
    # exports the demo model with optimum into the venv. It runs in that directory as `.`:
    # Infinity 0.0.78 hands optimum 2.1 the graph's path as found under the model id, which
    # optimum takes relative to it. Mean pooling as the snapshot says (`auto` would take the
    # [CLS] token for this engine).
    return [
        str(VENVS / "infinity-onnx" / "bin" / "infinity_emb"), "v2", "--engine", "optimum",
        "--model-id", ".", "--served-model-name", "minilm", "--device", "cpu",
        "--port", str(port), "--batch-size", str(s["batch_size"]), "--pooling-method", "mean",
        "--no-model-warmup", "--log-level", "warning",
    ]  # fmt: skip


def _ray_command(model: Path, port: int, s: dict[str, Any]) -> list[str]:
    return [
        _python("ray"), str(HERE / "ray_server.py"), "--model", str(model),
        "--port", str(port), "--max-batch-size", str(s["max_batch_size"]),
        "--batch-wait-timeout", str(s["batch_wait_timeout"]), "--dtype", s.get("dtype", "float32"),
    ]  # fmt: skip


PEERS: dict[str, Peer] = {
    "litserve": Peer(
        name="litserve",
        path="/predict",
        health="/health",
        body=lambda text: {"inputs": [text], "parameters": {"truncate": True}},
        embedding=lambda out: out["embedding"],
        command=_litserve_command,
        sweep=tuple(
            {"max_batch_size": b, "batch_timeout": t} for b in (16, 32, 64) for t in (0.005, 0.02)
        ),
        default={"max_batch_size": 16, "batch_timeout": 0.02},
    ),
    "infinity": Peer(
        name="infinity",
        path="/embeddings",
        health="/health",
        body=lambda text: {"model": "minilm", "input": [text]},
        embedding=lambda out: out["data"][0]["embedding"],
        command=_infinity_command,
        sweep=tuple({"batch_size": b} for b in (16, 32, 64)),
        default={"batch_size": 16},
    ),
    "infinity-onnx": Peer(
        name="infinity-onnx",
        path="/embeddings",
        health="/health",
        body=lambda text: {"model": "minilm", "input": [text]},
        embedding=lambda out: out["data"][0]["embedding"],
        command=_infinity_onnx_command,
        cwd=VENVS / "infinity-onnx" / "model",
        sweep=tuple({"batch_size": b} for b in (8, 16, 32, 64)),
        default={"batch_size": 16},
    ),
    "ray": Peer(
        name="ray",
        path="/predict",
        health="/-/healthz",  # Ray Serve's proxy
        body=lambda text: {"inputs": [text], "parameters": {"truncate": True}},
        embedding=lambda out: out["embedding"],
        command=_ray_command,
        sweep=tuple(
            {"max_batch_size": b, "batch_wait_timeout": t} for b in (16, 32) for t in (0.005, 0.02)
        ),
        default={"max_batch_size": 16, "batch_wait_timeout": 0.02},
        stop=_signal_leader,
    ),
}


@contextlib.asynccontextmanager
async def run_peer(
    peer: Peer, model: Path, settings: dict[str, Any], timeout_s: float = 300.0
) -> AsyncIterator[str]:
    """Start `peer` from its venv, wait for its health route, yield its base URL, stop it."""
    from aiohttp.test_utils import unused_port

    port = unused_port()
    argv = peer.command(model, port, settings)
    if not Path(argv[0]).exists():
        raise RuntimeError(f"{argv[0]} missing: run benchmarks/peers/setup.sh {peer.name}")
    log = open(VENVS / f"{peer.name}.log", "ab")  # noqa: SIM115
    log.write(f"\n--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
    log.flush()
    # In its venv folder: what a peer writes to its working directory (LitServe writes a
    # client.py there) stays out of the repository.
    proc = subprocess.Popen(
        argv, env={**os.environ, **OFFLINE}, cwd=peer.cwd or VENVS / peer.name, stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers share the group: stop them all at the end
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as probe:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{peer.name} exited with {proc.returncode}; see {log.name}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{peer.name} not healthy after {timeout_s:g}s")
                with contextlib.suppress(aiohttp.ClientError):
                    async with probe.get(base + peer.health) as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.25)
            # Health can precede the model (LitServe answers once its workers are up): make
            # sure a real request is answered with one 384-dimensional embedding.
            for _ in range(int(timeout_s * 4)):
                with contextlib.suppress(aiohttp.ClientError):
                    async with probe.post(base + peer.path, json=peer.body("warm up")) as r:
                        if r.status == 200:
                            dims = len(peer.embedding(await r.json()))
                            if dims != 384:
                                raise RuntimeError(f"{peer.name} answered {dims} dimensions")
                            break
                await asyncio.sleep(0.25)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            if peer.stop is not None:
                peer.stop(proc)
            else:
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # stragglers that outlived the leader
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


async def drive(
    peer: Peer,
    model: Path,
    settings: dict[str, Any],
    texts: list[str],
    concurrency: list[int],
    rates: list[float],
) -> dict[str, Any]:
    """The sidecar's TCP runs against one peer: closed loop per concurrency, open loop per rate."""
    bodies = [peer.body(t) for t in texts]
    runs: dict[str, Any] = {}
    async with run_peer(peer, model, settings) as base:
        url = base + peer.path
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await closed_loop(session, url, bodies[:64], 8)  # warm the connections
            for c in concurrency:
                runs[f"tcp/closed/{c}"] = (await closed_loop(session, url, bodies, c)).summary()
            for rate in rates:
                runs[f"tcp/open/{rate:g}"] = (await open_loop(session, url, bodies, rate)).summary()
    return runs


async def best_settings(
    peer: Peer, model: Path, texts: list[str], concurrency: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """Try each of the peer's sweep settings at `concurrency`; keep the highest throughput."""
    tried: dict[str, float] = {}
    best, best_rate = peer.default, -1.0
    for settings in peer.sweep:
        runs = await drive(peer, model, settings, texts, [concurrency], [])
        rate = runs[f"tcp/closed/{concurrency}"]["throughput_per_s"]
        tried[",".join(f"{k}={v}" for k, v in settings.items())] = rate
        if rate > best_rate:
            best, best_rate = settings, rate
    return best, tried
