"""Serving overhead of the batcher and HTTP layer, against the same model in-process, in one run.

    python -m benchmarks.batching [--requests 1500] [--concurrency 64] [--batch-size 32]

On one corpus of real sentences (benchmarks.harness.corpus), measures:
- in-process: our model code fed the corpus in arrival-order chunks of the server's batch size
  (tokenize + truncate + collate + forward);
- served: `sidecar serve` in a subprocess on the same model, C closed-loop clients over the
  Unix socket and over TCP, one sentence per request;
- one item at a time, taken in turn in-process, over the socket and over TCP for each of 300
  texts: the median per-text difference is what serving adds to one request.
Figures are reported as ratios (or differences) against the in-process baseline of the same run.
Writes benchmarks/results/batching.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import torch

from benchmarks.harness import (
    ROOT,
    closed_loop,
    corpus,
    demo_model,
    histogram_delta,
    predict_bodies,
    serve,
)
from sidecar.models import TextInputs, run_inline


class InProcess:
    """Our model code in this process: the served recipe (prepare, collate, forward, finish)."""

    def __init__(self, dtype: str) -> None:
        self.model = demo_model(dtype)

    def run(self, chunk: list[str]) -> None:
        """One batch of `chunk`, in arrival order."""
        run_inline(
            self.model, TextInputs(chunk, truncate=True), batch_size=len(chunk), by_length=False
        )

    def throughput(self, texts: list[str], batch_size: int) -> dict[str, float]:
        for text in texts[:64]:  # warm-up across shapes
            self.run([text])
        self.run(texts[:batch_size])
        started = time.perf_counter()
        for i in range(0, len(texts), batch_size):
            self.run(texts[i : i + batch_size])
        return {"throughput_per_s": round(len(texts) / (time.perf_counter() - started), 2)}


async def served(
    texts: list[str], concurrency: int, batch_size: int, dtype: str, baseline: InProcess
) -> dict[str, Any]:
    env = {"SIDECAR_DTYPE": dtype, "SIDECAR_BATCH_MAX_SIZE": str(batch_size)}
    results: dict[str, Any] = {}
    bodies = predict_bodies(texts)
    with tempfile.TemporaryDirectory(prefix="bench-", dir="/tmp") as socket_dir:
        async with serve(env, socket_dir) as server, server.sessions() as sessions:
            for transport, (session, base) in sessions.items():
                url = f"{base}/v1/predict"
                await closed_loop(session, url, bodies[:64], 8)  # warm the connections
                before = await server.metrics()
                saturated = await closed_loop(session, url, bodies, concurrency)
                after = await server.metrics()
                results[f"{transport}_saturated"] = saturated.summary() | {
                    "batch_sizes": histogram_delta(before, after, "sidecar_batch_size"),
                    "padding_ratio": histogram_delta(before, after, "sidecar_batch_padding_ratio"),
                }
            results["single"] = await interleaved_singles(texts[:300], sessions, baseline)
    return results


async def interleaved_singles(
    texts: list[str],
    sessions: dict[str, tuple[aiohttp.ClientSession, str]],
    baseline: InProcess,
) -> dict[str, float]:
    """One item at a time, in turn in-process, over the socket and over TCP, per text.

    Taken in turn, the three see the same machine: the per-text differences are what serving
    adds, free of the drift between runs minutes apart. Each is timed on its second run of the
    text, right after its first: the in-process model and the server hold separate weights, and
    whichever ran last has them in cache, as a lone client's server would.
    """
    times: dict[str, list[float]] = {"in_process": [], **{t: [] for t in sessions}}

    async def once(way: str, text: str) -> float:
        started = time.perf_counter()
        if way == "in_process":
            baseline.run([text])
        else:
            session, base = sessions[way]
            async with session.post(f"{base}/v1/predict", json=predict_bodies([text])[0]) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{way}: status {r.status}")
        return time.perf_counter() - started

    for text in texts:
        for way, samples in times.items():
            await once(way, text)
            samples.append(await once(way, text))
    summary = {f"{k}_p50_ms": round(statistics.median(v) * 1000, 3) for k, v in times.items()}
    for transport in sessions:
        added = [s - i for s, i in zip(times[transport], times["in_process"], strict=True)]
        summary[f"{transport}_added_p50_ms"] = round(statistics.median(added) * 1000, 3)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    texts = corpus(args.requests)
    model = InProcess(args.dtype)
    baseline = model.throughput(texts, args.batch_size)
    serving = asyncio.run(served(texts, args.concurrency, args.batch_size, args.dtype, model))
    ratios: dict[str, float] = {}
    for transport in ("uds", "tcp"):
        ratios[f"{transport}_throughput_vs_in_process"] = round(
            serving[f"{transport}_saturated"]["throughput_per_s"] / baseline["throughput_per_s"],
            3,
        )
        ratios[f"{transport}_single_added_p50_ms"] = serving["single"][f"{transport}_added_p50_ms"]
    report = {
        "machine": {"cores": os.cpu_count(), "torch": torch.__version__, "dtype": args.dtype},
        "requests": args.requests,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "in_process": baseline,
        "served": serving,
        "ratios": ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "batching.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
