"""Acceptance 4 of jobs: does a 100 000-item job slow interactive traffic, and does it use the
capacity the traffic leaves?

One `sidecar serve` of the demo model. First the saturated rate S (closed loop) and the job's
rate alone (no traffic). Then turns, in the order A B B A A B ...: A is interactive load alone,
an open loop (Poisson arrivals) at S/2 of one-sentence predict requests; B is the same load with
a 100 000-item job submitted at the start of the turn (cancelled at its end). Reported: p50 and
p99 of the interactive latency with and without the job (pooled over turns, and their ratios),
the job's items/s during B turns (from the server's batch counters: all items run, less the
requests'), and its share of what the load leaves, three ways: over (S - S/2) items/s, over half
its own rate alone, and over its rate alone times the device time the load leaves idle (the
forward-pass seconds per second of the A turns). Writes JSON, turn by turn too.

    flock /tmp/bench.lock python -m benchmarks.job_interference --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.harness import (
    LoadResult,
    Served,
    closed_loop,
    corpus,
    histogram_delta,
    open_loop,
    predict_bodies,
    serve,
)

JOB_ITEMS = 100_000
WAIT_METRIC = "sidecar_interactive_wait_on_jobs_seconds"


async def job_progress(session: aiohttp.ClientSession, base: str, job_id: str) -> dict[str, Any]:
    async with session.get(f"{base}/v1/jobs/{job_id}") as r:
        body: dict[str, Any] = await r.json()
        return body


async def start_job(session: aiohttp.ClientSession, base: str, texts: list[str]) -> str:
    body = {"endpoint": "/v1/predict", "inputs": texts, "parameters": {"truncate": True}}
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    async with session.post(f"{base}/v1/jobs", data=data, headers=headers) as r:
        assert r.status == 202, await r.text()
        job_id: str = (await r.json())["id"]
    async with asyncio.timeout(60):  # running: its first items are computed
        while True:
            if (await job_progress(session, base, job_id))["progress"]["completed"]:
                break
            await asyncio.sleep(0.05)
    return job_id


async def stop_job(session: aiohttp.ClientSession, base: str, job_id: str) -> None:
    async with session.post(f"{base}/v1/jobs/{job_id}/cancel") as r:
        await r.read()
    async with asyncio.timeout(60):
        while True:
            if (await job_progress(session, base, job_id))["status"] == "cancelled":
                break
            await asyncio.sleep(0.05)
    async with session.delete(f"{base}/v1/jobs/{job_id}") as r:
        await r.read()


async def items_run(served: Served) -> float:
    """Items the server's forward passes have run so far, interactive and job items alike (a
    job's progress moves by whole micro-batches of 256 lines: too coarse for a turn)."""
    return (await served.metrics())["sidecar_batch_size_sum"]


async def device_s(served: Served) -> float:
    """Seconds the server's forward passes have run so far."""
    return (await served.metrics())["sidecar_inference_duration_seconds_sum"]


async def job_rate(served: Served, seconds: float) -> float:
    """Items/s of a job running alone."""
    first, began = await items_run(served), time.perf_counter()
    await asyncio.sleep(seconds)
    return (await items_run(served) - first) / (time.perf_counter() - began)


def short_texts(count: int, max_words: int) -> list[str]:
    """`count` texts of the corpus cut to at most `max_words` words: interactive queries and
    bulk documents alike are short here, so that a run takes minutes on a small CPU."""
    return [" ".join(text.split()[:max_words]) for text in corpus(count)]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    texts = short_texts(JOB_ITEMS, args.max_words)
    bodies = predict_bodies(texts)
    with tempfile.TemporaryDirectory(prefix="jb-", dir="/tmp") as scratch:
        env = (
            {"SIDECAR_MODEL": args.model, "SIDECAR_JOBS_DIR": f"{scratch}/jobs"}
            if args.model
            else {"SIDECAR_JOBS_DIR": f"{scratch}/jobs"}
        )
        async with serve(env, scratch, name="jobs") as served:
            return await measure(args, served, texts, bodies)


async def measure(
    args: argparse.Namespace, served: Served, texts: list[str], bodies: list[dict[str, Any]]
) -> dict[str, Any]:
    session, base = served.session("tcp")
    async with session:
        url = f"{base}/v1/predict"
        warm = await closed_loop(session, url, bodies[:300], 32)
        count = int(warm.ok / warm.elapsed_s * args.seconds)  # saturation for about a turn
        saturated = await closed_loop(session, url, bodies[300 : 300 + count], 32)
        capacity = saturated.ok / saturated.elapsed_s
        rate = capacity * args.load
        job_id = await start_job(session, base, texts)
        alone = await job_rate(served, args.seconds / 2)
        await stop_job(session, base, job_id)

        pooled: dict[str, LoadResult] = {"without": LoadResult(), "with": LoadResult()}
        rates: list[float] = []
        turns: list[dict[str, Any]] = []
        busy: dict[str, list[float]] = {"without": [], "with": []}
        before = await served.metrics()
        order = ["without", "with", "with", "without"] * args.rounds
        count = int(rate * args.seconds)
        for turn, kind in enumerate(order):
            start = (turn * count) % (len(bodies) - count)
            load = bodies[start : start + count]
            if kind == "with":
                job_id = await start_job(session, base, texts)
            first, ran, began = await items_run(served), await device_s(served), time.perf_counter()
            result = await open_loop(session, url, load, rate, seed=turn)
            items, elapsed = await items_run(served) - first, time.perf_counter() - began
            busy[kind].append((await device_s(served) - ran) / elapsed)
            turns.append(
                {"kind": kind, **result.summary(), "device_busy": round(busy[kind][-1], 3)}
            )
            target = pooled[kind]
            target.sent += result.sent
            target.ok += result.ok
            target.latencies_s += result.latencies_s
            target.elapsed_s += result.elapsed_s
            for code, n in result.errors.items():
                target.errors[code] = target.errors.get(code, 0) + n
            if kind == "with":
                rates.append((items - result.ok) / elapsed)  # a request is one item
                turns[-1]["job_per_s"] = round(rates[-1], 1)
                await stop_job(session, base, job_id)
        after = await served.metrics()
    without, with_job = pooled["without"].summary(), pooled["with"].summary()
    job_loaded = sum(rates) / len(rates)
    left = capacity - rate
    busy_without = sum(busy["without"]) / len(busy["without"])
    return {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "model": args.model or "demo (all-MiniLM-L6-v2)",
        "max_words": args.max_words,
        "saturated_per_s": round(capacity, 1),
        "load_per_s": round(rate, 1),
        "seconds_per_turn": args.seconds,
        "turns": turns,
        "without_job": without,
        "with_job": with_job,
        "p50_ratio": round(with_job["p50_ms"] / without["p50_ms"], 3),
        "p99_ratio": round(with_job["p99_ms"] / without["p99_ms"], 3),
        "job_alone_per_s": round(alone, 1),
        "job_under_load_per_s": round(job_loaded, 1),
        "job_share_of_left_capacity": round(job_loaded / left, 3),
        "job_share_of_its_alone_rate_left": round(job_loaded / (alone * (1 - args.load)), 3),
        # The device time the load leaves: forward passes of small batches cost more per item
        # than the saturated ones S was measured with, so the load takes more than its share.
        "device_busy_without_job": round(busy_without, 3),
        "device_busy_with_job": round(sum(busy["with"]) / len(busy["with"]), 3),
        "job_share_of_device_time_left": round(job_loaded / (alone * (1 - busy_without)), 3),
        "interactive_wait_on_jobs_s": histogram_delta(before, after, WAIT_METRIC),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="SIDECAR_MODEL (default: the demo)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per turn")
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds")
    parser.add_argument("--load", type=float, default=0.5, help="share of saturation")
    parser.add_argument("--max-words", type=int, default=24, help="words per text, at most")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    report = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "job_interference.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps({k: v for k, v in report.items() if k != "interactive_wait_on_jobs_s"}, indent=2)
    )


if __name__ == "__main__":
    main()
