"""Acceptance 4 of jobs with the device taken out: is the job's share a scheduling limit?

`benchmarks.job_interference` runs the real server on this machine's CPU, where the load at S/2
keeps the device busy 0.7 to 0.8 of the time: small passes cost about twice as much per item as
large ones, and the two cores are shared with the event loop and the client. This benchmark runs
the same scheduler (`batching.Batcher`: lanes, stepped passes, the starvation guard, the cost
fit) in one process against a simulated device whose pass sleeps what a GPU pass would cost:
`max(floor, per_token x padded tokens)`, in `steps` equal steps (a BERT-family encoder's 13 on a
6-layer model), on one device thread as the server has it. Sleeping takes no CPU, so the
client, the loop and the device do not compete.

Then as the server benchmark: the saturated rate S (a closed loop of one-item requests), the
job's rate alone, and turns A B B A ... of an open loop (Poisson) at S/2 without (A) and with (B)
a job fed as the job runner feeds it (micro-batches of 256 bulk items, two in flight). Reported:
p50 and p99 of the interactive latency with and without the job and their ratios, the job's
items/s in B turns and its share of S - S/2, and the device's busy share in each; all of it
twice, with bulk items riding in interactive batches' free rows (`bulk_rider_share` 0.02, the
default) and without (0), one after the other.

    python -m benchmarks.job_interference_sim [--floor-ms 40] [--per-token-us 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from batching import BatchConfig, Batcher
from batching.steps import Steps

MICRO_BATCH = 256  # the job runner's micro-batch (sidecar/serving/jobs/runner.py)
IN_FLIGHT = 2  # micro-batches it keeps queued


class SimulatedDevice:
    """A pass sleeps `max(floor_s, per_token_s x items x the longest item's tokens)`: a GPU's
    shape, flat up to its knee (`floor_s / per_token_s` padded tokens), then linear."""

    def __init__(self, floor_s: float, per_token_s: float, steps: int) -> None:
        self.floor_s, self.per_token_s, self.steps = floor_s, per_token_s, steps
        self.busy_s = 0.0
        self._lock = threading.Lock()

    def cost_s(self, batch: Sequence[int]) -> float:
        return max(self.floor_s, self.per_token_s * len(batch) * max(batch))

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)
        with self._lock:
            self.busy_s += seconds

    def run(self, batch: Sequence[int]) -> list[int]:
        self._sleep(self.cost_s(batch))
        return list(batch)

    def run_steps(self, batch: Sequence[int]) -> Steps[int]:
        step_s = self.cost_s(batch) / self.steps
        for _ in range(self.steps - 1):
            self._sleep(step_s)
            yield
        self._sleep(step_s)
        return list(batch)


def make_batcher(
    device: SimulatedDevice, args: argparse.Namespace, rider_share: float
) -> Batcher[int, Any, int]:
    config = BatchConfig(
        max_size=args.max_size, max_tokens=args.max_tokens, bulk_rider_share=rider_share
    )
    return Batcher(
        list,
        device.run,
        config,
        run_executor=ThreadPoolExecutor(1, thread_name_prefix="device"),
        run_steps=device.run_steps,
        steps=device.steps,
    )


async def saturate(batcher: Batcher[int, Any, int], tokens: int, clients: int, s: float) -> float:
    """Items per second of `clients` closed-loop one-item requests for `s` seconds."""
    done, end = 0, time.perf_counter() + s

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await batcher.submit([tokens], [tokens])
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - started)


async def open_loop(
    batcher: Batcher[int, Any, int], tokens: int, rate: float, s: float, seed: int
) -> list[float]:
    """Latencies (seconds) of one-item requests arriving as a Poisson process at `rate`."""
    rng, latencies = random.Random(seed), list[float]()

    async def one() -> None:
        sent = time.perf_counter()
        await batcher.submit([tokens], [tokens])
        latencies.append(time.perf_counter() - sent)

    tasks, due, end = [], time.perf_counter(), time.perf_counter() + s
    while (due := due + rng.expovariate(rate)) < end:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies


class Job:
    """Feeds bulk micro-batches as the job runner does, counting the items that ran."""

    def __init__(self, batcher: Batcher[int, Any, int], tokens: int) -> None:
        self.items = 0
        self._feeders = [asyncio.create_task(self._feed(batcher, tokens)) for _ in range(IN_FLIGHT)]

    async def _feed(self, batcher: Batcher[int, Any, int], tokens: int) -> None:
        chunk = [tokens] * MICRO_BATCH
        while True:
            await batcher.submit(chunk, chunk, bulk=True)
            self.items += MICRO_BATCH

    async def stop(self) -> None:
        for feeder in self._feeders:
            feeder.cancel()
        await asyncio.gather(*self._feeders, return_exceptions=True)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


async def measure(args: argparse.Namespace, rider_share: float) -> dict[str, Any]:
    device = SimulatedDevice(args.floor_ms / 1000, args.per_token_us / 1e6, args.steps)
    batcher = make_batcher(device, args, rider_share)
    await batcher.start()
    try:
        await saturate(batcher, args.tokens, args.clients, 2.0)  # the cost fit learns
        capacity = await saturate(batcher, args.tokens, args.clients, args.seconds)
        job = Job(batcher, args.tokens)
        await asyncio.sleep(args.seconds / 2)
        alone = job.items / (args.seconds / 2)
        await job.stop()
        rate = capacity * args.load
        latencies: dict[str, list[float]] = {"without": [], "with": []}
        busy: dict[str, list[float]] = {"without": [], "with": []}
        rates: list[float] = []
        for turn, kind in enumerate(["without", "with", "with", "without"] * args.rounds):
            job_here = Job(batcher, args.tokens) if kind == "with" else None
            busy_before, started = device.busy_s, time.perf_counter()
            latencies[kind] += await open_loop(batcher, args.tokens, rate, args.seconds, turn)
            elapsed = time.perf_counter() - started
            busy[kind].append((device.busy_s - busy_before) / elapsed)
            if job_here is not None:
                rates.append(job_here.items / elapsed)  # micro-batches that ran, whole
                await job_here.stop()
    finally:
        await batcher.stop()
    p = {kind: (percentile(v, 50), percentile(v, 99)) for kind, v in latencies.items()}
    job_rate = statistics.fmean(rates)
    return {
        "bulk_rider_share": rider_share,
        "saturated_per_s": round(capacity, 1),
        "load_per_s": round(rate, 1),
        "p50_ms": {kind: round(v[0], 2) for kind, v in p.items()},
        "p99_ms": {kind: round(v[1], 2) for kind, v in p.items()},
        "p50_ratio": round(p["with"][0] / p["without"][0], 3),
        "p99_ratio": round(p["with"][1] / p["without"][1], 3),
        "job_alone_per_s": round(alone, 1),
        "job_under_load_per_s": round(job_rate, 1),
        "job_share_of_left_capacity": round(job_rate / (capacity - rate), 3),
        "device_busy_without_job": round(statistics.fmean(busy["without"]), 3),
        "device_busy_with_job": round(statistics.fmean(busy["with"]), 3),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--floor-ms", type=float, default=40.0, help="a pass's floor")
    parser.add_argument("--per-token-us", type=float, default=4.0, help="past the knee")
    parser.add_argument("--steps", type=int, default=13, help="steps of a pass")
    parser.add_argument("--tokens", type=int, default=128, help="tokens of an item")
    parser.add_argument("--max-size", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--clients", type=int, default=128, help="closed loop, for S")
    parser.add_argument("--load", type=float, default=0.5, help="share of saturation")
    parser.add_argument("--seconds", type=float, default=10.0, help="per turn")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds")
    parser.add_argument("--out", default="benchmarks/results/job_interference_sim.json")
    args = parser.parse_args()
    result = {
        "device": {
            "floor_ms": args.floor_ms, "per_token_us": args.per_token_us, "steps": args.steps,
            "tokens_per_item": args.tokens, "max_size": args.max_size,
        },
        # The batcher as configured (riders at 2%), then with riders off: what they bring.
        "runs": [asyncio.run(measure(args, share)) for share in (0.02, 0.0)],
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
