"""The GPU check's serving steps: the served benchmark, the out-of-memory split, the NVML gauges.

Run by benchmarks.gpu_check, each in a process of its own; see benchmarks.gpu_steps for how steps
record what they find. Only the standard library is imported at module level.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.gpu_steps import model_at

if TYPE_CHECKING:
    import aiohttp

    from benchmarks.gpu_check import Context
    from benchmarks.harness import Served

# GPU busy share the served benchmark should reach at its highest client count.
UTILIZATION_TARGET = 0.9
UTILIZATION_METRIC = "sidecar_gpu_utilization_ratio"
GPU_GAUGES = (
    UTILIZATION_METRIC,
    "sidecar_gpu_memory_used_bytes",
    "sidecar_gpu_memory_total_bytes",
    "sidecar_gpu_power_watts",
)
# NVML's utilisation covers the last sample period (up to a second): samples taken sooner after
# a run starts still show the idle time before it.
_SAMPLE_EVERY_S = 0.5
_SETTLE_S = 1.0
# The memory limit of the out-of-memory step leaves this share of what a full batch's pass
# needs beyond the model's own memory: the full batch cannot run, its halves can.
OOM_SHARE = 0.6


# -- the served benchmark -----------------------------------------------------------------------


def serve(ctx: Context) -> None:
    """`python -m sidecar serve` on the check's model, closed loops at each client count over
    the Unix socket, with the GPU's utilisation read from the server's own /metrics."""
    asyncio.run(_serve(ctx))


async def _serve(ctx: Context) -> None:
    from benchmarks.harness import closed_loop, corpus, predict_bodies, serve

    sizes = ctx.sizes
    env = {"SIDECAR_MODEL": ctx.shared["model_dir"], "SIDECAR_DEVICE": ctx.device}
    if ctx.device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0")
    ctx.put("server_env", env)
    bodies = predict_bodies(corpus(sizes.serve_max_requests))
    with tempfile.TemporaryDirectory(prefix="gc-", dir="/tmp") as socket_dir:
        started = time.perf_counter()
        async with serve(env, socket_dir, root=ctx.root, name="gpu-check") as server:
            ctx.put("ready_s", round(time.perf_counter() - started, 2))
            session, base = server.session("uds")
            async with session:
                ctx.put("server", await _info(session, base))
                url = f"{base}/v1/predict"
                await closed_loop(session, url, bodies[:64], 8)  # warm the connections
                for clients in sizes.serve_clients:
                    run = await _closed_run(server, session, url, bodies, clients, ctx)
                    ctx.put(f"clients_{clients}", run)
                ctx.put("batching_after", (await _info(session, base))["batching"])


async def _closed_run(
    server: Served,
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[dict[str, Any]],
    clients: int,
    ctx: Context,
) -> dict[str, Any]:
    """A short probe to learn the rate, then a run sized to last about `serve_run_s`."""
    from benchmarks.harness import closed_loop, histogram_delta

    sizes = ctx.sizes
    probe = await closed_loop(session, url, bodies[: max(2 * clients, 16)], clients)
    rate = probe.ok / probe.elapsed_s if probe.elapsed_s > 0 else 0.0
    count = int(min(max(rate * sizes.serve_run_s, clients), sizes.serve_max_requests))
    before = await server.metrics()
    samples: list[tuple[float, float]] = []
    sampler = asyncio.create_task(_sample(server, samples))
    client_cpu, server_cpu = time.process_time(), _cpu_s(server.proc.pid)
    try:
        result = await closed_loop(session, url, bodies[:count], clients)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    elapsed = max(result.elapsed_s, 1e-9)
    client_cpu, server_cpu = time.process_time() - client_cpu, _cpu_s(server.proc.pid) - server_cpu
    after = await server.metrics()
    return result.summary() | {
        "clients": clients,
        "seconds": round(result.elapsed_s, 2),
        # CPU seconds per second: a client near 1.0 is what limits the run, not the server;
        # a server near 1.0 is bound by its event loop (Python), not by the GPU.
        "client_cpu_share": round(client_cpu / elapsed, 2),
        "server_cpu_share": round(server_cpu / elapsed, 2),
        "gpu_utilization": _utilization(samples, after),
        "gpu_memory_used_bytes": _gauge(after, "sidecar_gpu_memory_used_bytes"),
        "batch_sizes": histogram_delta(before, after, "sidecar_batch_size"),
        "padding": histogram_delta(before, after, "sidecar_batch_padding_ratio"),
    }


async def _sample(server: Served, samples: list[tuple[float, float]]) -> None:
    started = time.perf_counter()
    while True:
        value = _gauge(await server.metrics(), UTILIZATION_METRIC)
        if value is not None:
            samples.append((time.perf_counter() - started, value))
        await asyncio.sleep(_SAMPLE_EVERY_S)


def _utilization(samples: list[tuple[float, float]], after: dict[str, float]) -> dict[str, Any]:
    if _gauge(after, UTILIZATION_METRIC) is None:
        return {"skipped": f"no {UTILIZATION_METRIC} in /metrics (no GPU, or NVML unavailable)"}
    settled = [value for at, value in samples if at >= _SETTLE_S]
    if not settled:
        return {"skipped": f"the run ended within {_SETTLE_S:g} s: no settled sample"}
    return {
        "samples": len(settled),
        "median": round(statistics.median(settled), 3),
        "mean": round(statistics.mean(settled), 3),
        "min": round(min(settled), 3),
        "max": round(max(settled), 3),
    }


def _cpu_s(pid: int) -> float:
    """CPU seconds (user and system, all threads) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gauge(metrics: dict[str, float], name: str) -> float | None:
    return next((value for key, value in metrics.items() if key.startswith(name + "{")), None)


async def _info(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/v1/info") as response:
        info: dict[str, Any] = await response.json()
    async with session.get(f"{base}/v1/models/default") as response:
        card: dict[str, Any] = await response.json()
    load = info.get("load") or {}
    return {
        "device": info.get("device"),
        "dtype": info.get("dtype"),
        "torch": info.get("torch"),
        "to_ready_s": (info.get("startup_s") or {}).get("to_ready"),
        "load_gb_per_s": load.get("gb_per_s"),
        "load_phases_s": load.get("phases_s"),
        "batch_bounds": card.get("batching"),
        "batching": info.get("batching"),
    }


# -- the out-of-memory split --------------------------------------------------------------------


class OomWatch:
    """A model whose out-of-memory errors and memory releases are counted; without CUDA, an
    out-of-memory error is raised for batches over `simulate_above` padded tokens."""

    def __init__(self, model: Any, simulate_above: int | None = None) -> None:
        self.model = model
        self.simulate_above = simulate_above
        self.ooms = 0
        self.releases: list[str] = []  # the thread each release ran on

    @property
    def card(self) -> Any:
        return self.model.card

    def prepare(self, inputs: Any) -> Any:
        return self.model.prepare(inputs)

    def collate(self, items: Sequence[Any], shape: Any = None) -> Any:
        return self.model.collate(items, shape=shape)

    def forward(self, batch: Any) -> Iterable[Any]:
        import torch

        padded = batch.input_ids.numel()
        try:
            if self.simulate_above is not None and padded > self.simulate_above:
                raise torch.cuda.OutOfMemoryError(
                    f"simulated: {padded} padded tokens, over {self.simulate_above}"
                )
            return self.model.forward(batch)  # type: ignore[no-any-return]
        except torch.cuda.OutOfMemoryError:
            self.ooms += 1
            raise

    def finish(self, outputs: Sequence[Any], inputs: Any) -> Any:
        return self.model.finish(outputs, inputs)

    def warmup(
        self, max_batch: int, max_tokens: int, shapes: Any = None
    ) -> list[tuple[int, float]]:
        return self.model.warmup(max_batch, max_tokens, shapes)  # type: ignore[no-any-return]

    def is_oom(self, exc: BaseException) -> bool:
        return self.model.is_oom(exc)  # type: ignore[no-any-return]

    def is_fatal(self, exc: BaseException) -> bool:
        return self.model.is_fatal(exc)  # type: ignore[no-any-return]

    def release_memory(self) -> None:
        self.releases.append(threading.current_thread().name)
        self.model.release_memory()


def oom(ctx: Context) -> None:
    """One request too big for a small memory limit through the engine: the batcher halves the
    batch until it fits, every item succeeds, and the model releases the allocator's cache."""
    asyncio.run(_oom(ctx))


async def _oom(ctx: Context) -> None:
    import numpy as np
    import torch

    from batching import BatchConfig, BatchObserver, BatchStats
    from sidecar.models import TextInputs, run_inline
    from sidecar.serving.engine import Engine, Executors

    class Batches(BatchObserver):
        def __init__(self) -> None:
            self.sizes: list[int] = []

        def on_batch(self, stats: BatchStats) -> None:
            self.sizes.append(stats.size)

    model = model_at(Path(ctx.shared["model_dir"]), ctx.device)
    count = ctx.sizes.oom_items
    # Each text is over the model's limit: truncated, every item costs the same.
    texts = [f"{i} " + "the sidecar batches requests " * 80 for i in range(count)]
    inputs = TextInputs(texts, truncate=True)
    tokens = max(model.prepare(inputs).costs)
    reference = run_inline(model, inputs, batch_size=max(1, count // 8)).vectors  # type: ignore[union-attr]
    cuda = ctx.device == "cuda"
    watched = OomWatch(model, None if cuda else int(count * tokens * OOM_SHARE))
    emptied: list[str] = []
    if cuda:
        ctx.put("memory_limit", _limit_memory(model, model.collate(model.prepare(inputs).items)))
        ooms_before = torch.cuda.memory_stats().get("num_ooms", 0)
        empty_cache = torch.cuda.empty_cache

        def counted_empty_cache() -> None:
            emptied.append(threading.current_thread().name)
            empty_cache()

        torch.cuda.empty_cache = counted_empty_cache
    else:
        ctx.put("memory_limit", {
            "skipped": "no CUDA device: out-of-memory simulated over "
            f"{watched.simulate_above} padded tokens"
        })  # fmt: skip
    batches, executors = Batches(), Executors.create()
    config = BatchConfig(window_s=0.0, max_size=count, max_tokens=count * tokens)
    engine = Engine(watched, config, observer=batches, executors=executors)
    try:
        await engine.start()
        inference = await engine.infer(inputs, deadline=None)
        budget_after = engine.batcher.token_budget()
        await engine.stop()
    finally:
        executors.shutdown()
        if cuda:
            torch.cuda.empty_cache = empty_cache
            torch.cuda.set_per_process_memory_fraction(1.0)
    vectors = inference.result.vectors  # type: ignore[union-attr]
    ctx.put("items", count)
    ctx.put("tokens_per_item", tokens)
    ctx.put("out_of_memory_errors", watched.ooms)
    if cuda:
        ctx.put("allocator_ooms", torch.cuda.memory_stats().get("num_ooms", 0) - ooms_before)
        ctx.put("empty_cache_threads", emptied)
    ctx.put("batches_run", batches.sizes)
    ctx.put("releases_on_threads", watched.releases)
    ctx.put("token_budget_after", budget_after)
    ctx.put("all_items_succeeded", len(vectors) == count and bool(np.isfinite(vectors).all()))
    ctx.put("min_cosine_to_unsplit", round(float((vectors * reference).sum(1).min()), 6))
    ctx.put("split", watched.ooms > 0 and max(batches.sizes, default=count) < count)


def _limit_memory(model: Any, batch: Any) -> dict[str, Any]:
    """Measure a full batch's pass, then limit the process to `OOM_SHARE` of what it needs."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model.forward(batch)
    peak = torch.cuda.max_memory_allocated() - base
    torch.cuda.empty_cache()
    reserved = torch.cuda.memory_reserved()
    total = torch.cuda.get_device_properties(0).total_memory
    limit = reserved + int(OOM_SHARE * peak)
    torch.cuda.set_per_process_memory_fraction(limit / total)
    return {
        "full_batch_bytes": peak,
        "reserved_bytes": reserved,
        "limit_bytes": limit,
        "fraction": round(limit / total, 6),
    }


# -- NVML gauges --------------------------------------------------------------------------------


def nvml(ctx: Context) -> None:
    """The GPU gauges as the sidecar exports them, with CUDA_VISIBLE_DEVICES set (the collector
    finds the GPU by the UUID torch gives, whatever the renumbering)."""
    # This process has not touched CUDA yet: the variable still decides what it sees.
    visible = os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
    ctx.put("cuda_visible_devices", visible)
    import torch
    from prometheus_client import CollectorRegistry, generate_latest

    from sidecar.metrics import GpuCollector
    from sidecar.models.device import device_uuid

    uuid = device_uuid(torch.device("cuda:0")) if ctx.device == "cuda" else None
    ctx.put("uuid", uuid or {"skipped": "no CUDA device"})
    collector = GpuCollector.open("0", uuid)
    if collector is None:
        ctx.put("gauges", {"skipped": "NVML unavailable (steps.log has the sidecar's reason)"})
        return
    registry = CollectorRegistry()
    registry.register(collector)
    lines = generate_latest(registry).decode().splitlines()
    gauges = {
        key: float(value)
        for key, _, value in (line.rpartition(" ") for line in lines)
        if key.startswith("sidecar_gpu_")
    }
    ctx.put("gauges", gauges)
    ctx.put("missing", [name for name in GPU_GAUGES if _gauge(gauges, name) is None])
    if ctx.device == "cuda":
        ctx.put("torch_memory_total_bytes", torch.cuda.get_device_properties(0).total_memory)
