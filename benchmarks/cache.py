"""Response cache: latency and throughput of hits against misses on the demo model.

    python -m benchmarks.cache [--texts 512] [--concurrency 64] [--batch 32]

`sidecar serve` on the demo model with `SIDECAR_CACHE_MAX_ITEMS` in a subprocess, over the Unix
socket. Each scenario sends corpus sentences it has not sent before (every item a miss), then the
very same requests again (every item a hit): one client with one sentence a request, one client
with `batch` sentences a request, and `concurrency` closed-loop clients with one sentence each.
The batch counters and the cache counters of /metrics are read around each pass, so that a hit
pass shows no forward pass at all. Writes benchmarks/results/cache.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, LoadResult, Served, closed_loop, corpus, serve

COUNTERS = (
    'sidecar_cache_total{result="hit"}',
    'sidecar_cache_total{result="miss"}',
    "sidecar_batch_size_count",
    "sidecar_batch_size_sum",
)


async def measured(
    served: Served, url: str, bodies: list[dict[str, Any]], concurrency: int
) -> dict[str, Any]:
    """One closed-loop pass of `bodies`: latency, throughput and what the counters moved."""
    before = await served.metrics()
    session, base = served.session("uds")
    async with session:
        result: LoadResult = await closed_loop(session, base + url, bodies, concurrency)
    after = await served.metrics()
    items = sum(len(body["inputs"]) for body in bodies)
    return {
        **result.summary(),
        "items_per_s": round(items * result.ok / len(bodies) / result.elapsed_s, 1),
        "moved": {name: after.get(name, 0.0) - before.get(name, 0.0) for name in COUNTERS},
    }


async def run(num_texts: int, concurrency: int, batch: int, max_items: int) -> dict[str, Any]:
    texts = iter(corpus(3 * num_texts + 64))
    warm = [[next(texts)] for _ in range(64)]
    one = [[next(texts)] for _ in range(num_texts)]
    many = [[next(texts) for _ in range(batch)] for _ in range(num_texts // batch)]
    loaded = [[next(texts)] for _ in range(num_texts)]
    scenarios = {
        "1 client, 1 text a request": (one, 1),
        f"1 client, {batch} texts a request": (many, 1),
        f"{concurrency} clients, 1 text a request": (loaded, concurrency),
    }
    report: dict[str, Any] = {}
    env = {"SIDECAR_DEVICE": "cpu", "SIDECAR_CACHE_MAX_ITEMS": str(max_items)}
    with tempfile.TemporaryDirectory(prefix="sc-", dir="/tmp") as socket_dir:
        async with serve(env, socket_dir) as served:
            await measured(served, "/v1/predict", [{"inputs": w} for w in warm], concurrency)
            for name, (inputs, clients) in scenarios.items():
                bodies = [{"inputs": chunk, "parameters": {"truncate": True}} for chunk in inputs]
                miss = await measured(served, "/v1/predict", bodies, clients)
                hit = await measured(served, "/v1/predict", bodies, clients)
                report[name] = {
                    "requests": len(bodies),
                    "miss": miss,
                    "hit": hit,
                    "p50_speedup": round(miss["p50_ms"] / hit["p50_ms"], 1),
                    "throughput_ratio": round(hit["items_per_s"] / miss["items_per_s"], 1),
                }
            final = await served.metrics()
    return {
        "config": {
            "texts": num_texts,
            "concurrency": concurrency,
            "batch": batch,
            "max_items": max_items,
        },
        "scenarios": report,
        "cache_items": final.get("sidecar_cache_items"),
        "cache_bytes": final.get("sidecar_cache_bytes"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-items", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    report = asyncio.run(run(args.texts, args.concurrency, args.batch, args.max_items))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cache.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
