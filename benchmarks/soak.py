"""Soak: the server's resident memory under hours-like load of varied input lengths.

    python -m benchmarks.soak [--minutes 20] [--quick] [--rate-factor 2] [--sample-s 5]
                              [--allocator image|glibc] [--env NAME=VALUE ...] [--root DIR]
                              [--label NAME] [--out DIR]

It serves the demo model (CPU, fp32) with `sidecar serve`, measures its saturation throughput
(closed loop, 64 clients, over the Unix socket), then drives an open loop of Poisson arrivals at
`--rate-factor` times that rate for `--minutes`, one real sentence per request
(benchmarks.harness.corpus, plus passages past the model's 256-token limit, sent with
`truncate: true`). Requests beyond what the server drains get 429 (queue full): they are counted
apart, and any 5xx is a failure. Every `--sample-s` seconds it reads the server's resident memory
(VmRSS, RssAnon, RssFile of /proc/<pid>/status) and the requests answered so far.

The figure: the growth of resident memory over the second half of the run, from a least-squares
line through the second half's samples (its rise across the half, over its value at the half
mark), and the plateau (the median resident memory of the second half). The server runs with
the allocator the CPU image sets (`--allocator image`: the LD_PRELOAD and MALLOC_CONF of
Dockerfile.cpu; the library must be installed, apt-get install libjemalloc2) or glibc's own
(`--allocator glibc`); the allocator it actually loaded is checked and reported. `--env` passes
more settings (allocator variables, SIDECAR_*) to the server, for experiments.
Writes benchmarks/results/soak.json and soak.png (`--label` names them soak-<label>.*).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    ROOT,
    LoadResult,
    Served,
    closed_loop,
    corpus,
    open_loop,
    predict_bodies,
    serve,
)

SATURATION_CLIENTS = 64
_STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile")


def texts_of_varied_length(count: int, seed: int = 5) -> list[str]:
    """Real sentences of varied length, and about 3% passages of 300+ words (past 256 tokens)."""
    sentences = corpus(count)
    rng = random.Random(seed)
    long = [" ".join(rng.sample(sentences, 12)) for _ in range(max(1, count // 32))]
    texts = sentences + long
    rng.shuffle(texts)
    return texts


def image_allocator() -> dict[str, str]:
    """The allocator variables the CPU image sets (LD_PRELOAD, MALLOC_CONF in Dockerfile.cpu)."""
    return dict(
        re.findall(r"\b(LD_PRELOAD|MALLOC_CONF)=(\S+)", (ROOT / "Dockerfile.cpu").read_text())
    )


def loaded_allocator(pid: int) -> str:
    """Which allocator process `pid` has mapped: a preloaded one by name, else glibc's."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return next((name for name in ("jemalloc", "tcmalloc", "mimalloc") if name in maps), "glibc")


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory of process `pid` in MB (10^6 bytes), from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in _STATUS_FIELDS:
            values[name] = int(rest.split()[0]) * 1024 / 1e6  # kB
    return values


def failures(result: LoadResult) -> dict[str, int]:
    """Errors other than 429: 5xx, 504 and connection errors alike."""
    return {code: n for code, n in result.errors.items() if code != "429"}


async def sample(
    pid: int, result: LoadResult, started: float, every_s: float, samples: list[dict[str, Any]]
) -> None:
    """Append a sample every `every_s` seconds until cancelled; print one a minute."""
    printed = -60.0
    while True:
        elapsed = time.perf_counter() - started
        entry = {
            "t_s": round(elapsed, 1),
            **{k: round(v, 2) for k, v in memory_mb(pid).items()},
            "ok": result.ok,
            "rejected_429": result.errors.get("429", 0),
            "failed": sum(failures(result).values()),
        }
        samples.append(entry)
        if entry["failed"]:
            entry = {**entry, "failures": failures(result)}
        if elapsed - printed >= 60:
            printed = elapsed
            print(json.dumps(entry), flush=True)
        await asyncio.sleep(every_s)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    texts = texts_of_varied_length(4000)
    bodies = predict_bodies(texts)
    allocator = image_allocator() if args.allocator == "image" else {}
    env = {"SIDECAR_DTYPE": "float32", "SIDECAR_DEVICE": "cpu", **allocator, **dict(args.env)}
    with tempfile.TemporaryDirectory(prefix="soak-", dir="/tmp") as sockets:
        async with serve(env, sockets, root=args.root) as server:
            pid = server.proc.pid
            loaded = loaded_allocator(pid)
            if allocator and loaded == "glibc":
                raise SystemExit(
                    f"the server did not load {allocator['LD_PRELOAD']}: install it (apt-get "
                    "install libjemalloc2) or pass --allocator glibc"
                )
            ready_mb = memory_mb(pid)["VmRSS"]
            saturation = await saturate(server, bodies, args.saturation_requests)
            rate = args.rate or round(args.rate_factor * saturation, 1)
            print(f"saturation {saturation:.1f} items/s; driving {rate:.1f} req/s", flush=True)
            duration_s = args.minutes * 60
            arrivals = bodies * (int(rate * duration_s) // len(bodies) + 1)
            arrivals = arrivals[: int(rate * duration_s)]
            samples: list[dict[str, Any]] = []
            session, base = server.session("uds")
            async with session:
                result = LoadResult()
                started = time.perf_counter()
                sampler = asyncio.create_task(sample(pid, result, started, args.sample_s, samples))
                try:
                    await open_loop(session, f"{base}/v1/predict", arrivals, rate, into=result)
                finally:
                    sampler.cancel()
                    await asyncio.gather(sampler, return_exceptions=True)
            samples.append(
                {"t_s": round(time.perf_counter() - started, 1), **memory_mb(pid)}
                | {"ok": result.ok, "rejected_429": result.errors.get("429", 0)}
                | {"failed": sum(failures(result).values())}
            )
            metrics = await server.metrics()
    return {
        "server_env": env,
        "allocator": loaded,
        "ready_rss_mb": round(ready_mb, 1),
        "saturation_items_per_s": round(saturation, 2),
        "rate_per_s": rate,
        "minutes": args.minutes,
        "load": result.summary(),
        "batches": int(metrics.get("sidecar_batch_size_count", 0)),
        "memory": growth(samples),
        "samples": samples,
    }


async def saturate(server: Served, bodies: list[dict[str, Any]], count: int) -> float:
    """Items/s served to `SATURATION_CLIENTS` closed-loop clients over the Unix socket."""
    session, base = server.session("uds")
    async with session:
        url = f"{base}/v1/predict"
        await closed_loop(session, url, bodies[:64], 8)  # warm the connections
        result = await closed_loop(session, url, bodies[:count], SATURATION_CLIENTS)
    if result.errors:
        raise RuntimeError(f"failed requests while measuring saturation: {result.errors}")
    return result.ok / result.elapsed_s


def growth(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The plateau and the growth of VmRSS over the second half of the samples."""
    end = samples[-1]["t_s"]
    second = [s for s in samples if s["t_s"] >= end / 2]
    times, rss = [s["t_s"] for s in second], [s["VmRSS"] for s in second]
    slope = statistics.linear_regression(times, rss).slope if len(second) >= 2 else 0.0
    at_half = statistics.linear_regression(times, rss).intercept + slope * times[0]
    rise = slope * (times[-1] - times[0])
    return {
        "start_rss_mb": round(samples[0]["VmRSS"], 1),
        "peak_rss_mb": round(max(s["VmRSS"] for s in samples), 1),
        "end_rss_mb": round(samples[-1]["VmRSS"], 1),
        "plateau_rss_mb": round(statistics.median(rss), 1),
        "second_half_slope_mb_per_min": round(slope * 60, 3),
        "second_half_growth_pct": round(100 * rise / at_half, 2),
        "second_half_max_minus_first_half_max_mb": round(
            max(rss) - max(s["VmRSS"] for s in samples if s["t_s"] < end / 2), 1
        ),
    }


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    samples = report["samples"]
    minutes = [s["t_s"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for field in _STATUS_FIELDS:
        top.plot(minutes, [s[field] for s in samples], label=field)
    memory = report["memory"]
    top.axvline(minutes[-1] / 2, color="gray", linestyle=":")
    growth_pct = memory["second_half_growth_pct"]
    top.set(ylabel="MB", title=f"server resident memory; second half {growth_pct:+.2f}%")
    top.set_ylim(bottom=0)
    top.legend()
    bottom.plot(minutes, [s["ok"] for s in samples], label="answered (200)")
    bottom.plot(minutes, [s["rejected_429"] for s in samples], label="rejected (429)")
    bottom.plot(minutes, [s["failed"] for s in samples], label="failed (other)")
    bottom.set(xlabel="minutes", ylabel="requests", title=f"{report['rate_per_s']} req/s offered")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="3 minutes, 300 saturation requests")
    parser.add_argument("--rate-factor", type=float, default=2.0, help="x saturation")
    parser.add_argument("--rate", type=float, help="req/s offered (instead of the factor)")
    parser.add_argument("--saturation-requests", type=int, default=800)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--allocator", choices=("image", "glibc"), default="image")
    parser.add_argument(
        "--env", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
        metavar="NAME=VALUE", help="a variable for the server (repeatable)",
    )  # fmt: skip
    parser.add_argument("--root", type=Path, default=ROOT, help="the source tree to serve")
    parser.add_argument("--label", help="write soak-<label>.json and .png")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.saturation_requests = 3.0, 300
    report = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        **asyncio.run(soak(args)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"soak-{args.label}" if args.label else "soak"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    drew = plot(report, args.out / f"{name}.png")
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))
    print(f"wrote {args.out / name}.json" + (" and .png" if drew else ""))
    failed = failures_total(report)
    if failed:
        raise SystemExit(f"{failed} requests failed other than with 429")


def failures_total(report: dict[str, Any]) -> int:
    return sum(n for code, n in report["load"]["errors"].items() if code != "429")


if __name__ == "__main__":
    main()
