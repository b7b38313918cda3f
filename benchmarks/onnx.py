"""The ONNX backend against ONNX Runtime in-process, our torch backend and Infinity's ONNX engine.

    python -m benchmarks.onnx [--requests 1200] [--rounds 3] [--concurrency 64]
                              [--peers infinity-onnx] [--onnx-dir DIR] [--out DIR]

One corpus (benchmarks.harness.corpus), one real sentence per request, fp32, the demo model:
  limit     ONNX Runtime in-process on the graph the server serves (`sidecar export onnx` of the
            demo, written to a temporary directory unless --onnx-dir names one): the snapshot's
            tokenizer (tokenizers, truncation at 256, padding to the longest) and a default
            `InferenceSession`, over the whole corpus sorted by length, at each batch size of
            BATCH_SIZES; the best is the limit (tokenizing included, as a server pays for it);
  onnx      `sidecar serve` on that directory (the onnx backend), 64 closed-loop clients over
            the Unix socket;
  torch     `sidecar serve` on the demo snapshot (the torch backend), the same load;
  peers     Infinity with its ONNX Runtime engine (benchmarks/peers, `infinity-onnx`: its own
            optimum export of the demo), the same load over TCP (it has no Unix socket; the
            transports differ by tens of microseconds a request, README "Performance").
Every server is up for the whole run; the rounds take turns (in a rotating order) so that each
ratio compares runs seconds apart on this shared machine; the median ratio over the rounds is
the figure. Writes benchmarks/results/onnx.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from benchmarks.harness import ROOT, closed_loop, corpus, histogram_delta, predict_bodies, serve

BATCH_SIZES = (8, 16, 32)
MAX_TOKENS = 256  # the demo's max_seq_length, which the server truncates to as well


class InProcess:
    """ONNX Runtime on the served graph, tokenizing with the snapshot's tokenizer, no server."""

    def __init__(self, directory: Path, texts: list[str]) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.session = ort.InferenceSession(str(directory / "model.onnx"))
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding()
        lengths = [len(e.ids) for e in self.tokenizer.encode_batch(texts)]
        self.texts = [texts[i] for i in np.argsort(lengths, kind="stable")]
        self.rate(8)  # warm-up

    def rate(self, batch_size: int) -> float:
        """Items/s over the corpus, sorted by length, in batches of `batch_size`."""
        started = time.perf_counter()
        for start in range(0, len(self.texts), batch_size):
            encodings = self.tokenizer.encode_batch(self.texts[start : start + batch_size])
            ids = np.array([e.ids for e in encodings], dtype=np.int32)
            feeds = {
                "input_ids": ids,
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=bool),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int32),
            }
            self.session.run(None, feeds)
        return len(self.texts) / (time.perf_counter() - started)

    def best(self) -> tuple[int, float, dict[str, float]]:
        rates = {b: self.rate(b) for b in BATCH_SIZES}
        best = max(rates, key=rates.__getitem__)
        return best, rates[best], {str(b): round(r, 2) for b, r in rates.items()}


def export_demo(out: Path) -> Path:
    from sidecar.onnx_export import export_onnx
    from sidecar.serving.loading import demo_model_path

    return export_onnx(str(demo_model_path()), out, num_samples=32).out


async def rounds(args: argparse.Namespace, onnx_dir: Path, texts: list[str]) -> dict[str, Any]:
    from benchmarks import peers

    bodies = predict_bodies(texts)
    limit = InProcess(onnx_dir, texts)
    env = {"SIDECAR_DTYPE": "float32"}
    report: dict[str, Any] = {"rounds": []}
    with tempfile.TemporaryDirectory(prefix="bench-", dir="/tmp") as socket_dir:
        async with contextlib.AsyncExitStack() as stack:
            onnx = await stack.enter_async_context(
                serve(env | {"SIDECAR_MODEL": str(onnx_dir)}, socket_dir, name="onnx")
            )
            torch_ = await stack.enter_async_context(serve(env, socket_dir, name="torch"))
            targets: dict[str, tuple[aiohttp.ClientSession, str, list[dict[str, Any]]]] = {}
            for name, server in (("onnx", onnx), ("torch", torch_)):
                session, base = server.session("uds")
                targets[name] = (
                    await stack.enter_async_context(session),
                    base + "/v1/predict",
                    bodies,
                )
            for name in args.peers:
                peer = peers.PEERS[name]
                base = await stack.enter_async_context(
                    peers.run_peer(peer, Path("unused"), dict(peer.default))
                )
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await stack.enter_async_context(session)
                targets[name] = (session, base + peer.path, [peer.body(t) for t in texts])
            for session, url, sample in targets.values():
                await closed_loop(session, url, sample[:64], 8)  # warm the connections
            names = ["limit", *targets]
            for index in range(args.rounds):
                order = names[index % len(names) :] + names[: index % len(names)]
                figures: dict[str, Any] = {}
                for name in order:
                    if name == "limit":
                        batch, rate, by_size = limit.best()
                        figures["limit"] = {"items_per_s": round(rate, 2), "batch_size": batch,
                                            "by_batch_size": by_size}  # fmt: skip
                        continue
                    session, url, sample = targets[name]
                    server = {"onnx": onnx, "torch": torch_}.get(name)
                    before = await server.metrics() if server else {}
                    result = await closed_loop(session, url, sample, args.concurrency)
                    figures[name] = result.summary()
                    if server:
                        after = await server.metrics()
                        sizes = histogram_delta(before, after, "sidecar_batch_size")
                        figures[name]["batch_sizes"] = sizes
                    if result.errors:
                        raise RuntimeError(f"{name}: failed requests {result.errors}")
                rate = {n: f["items_per_s"] if n == "limit" else f["throughput_per_s"]
                        for n, f in figures.items()}  # fmt: skip
                figures["ratios"] = {
                    f"onnx_over_{other}": round(rate["onnx"] / rate[other], 3)
                    for other in rate
                    if other != "onnx"
                }
                figures["order"] = order
                report["rounds"].append(figures)
                print(json.dumps({"round": index, **figures["ratios"], **rate}), flush=True)
    keys = report["rounds"][0]["ratios"]
    report["median_ratios"] = {
        key: statistics.median(r["ratios"][key] for r in report["rounds"]) for key in keys
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--peers", default="infinity-onnx", help="comma list; empty for none")
    parser.add_argument("--onnx-dir", type=Path, help="an exported demo (default: export one)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.peers = [p for p in args.peers.split(",") if p]
    texts = corpus(args.requests)
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="onnx-bench-") as scratch:
        onnx_dir = args.onnx_dir or export_demo(Path(scratch) / "demo-onnx")
        report = asyncio.run(rounds(args, onnx_dir, texts))
    report |= {
        "machine": {"cores": os.cpu_count(), "load_avg_before": load_before,
                    "load_avg_after": os.getloadavg()},
        "requests": args.requests,
        "concurrency": args.concurrency,
        "transport": {"onnx": "uds", "torch": "uds", **{p: "tcp" for p in args.peers}},
        "seconds": round(time.time() - started, 1),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onnx.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["median_ratios"], indent=2))
    print(f"wrote {args.out / 'onnx.json'}")


if __name__ == "__main__":
    main()
