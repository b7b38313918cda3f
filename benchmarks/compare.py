"""A/B a past revision against the working tree: served outputs bit for bit, throughput paired.

    python -m benchmarks.compare --base REV [--texts 200] [--requests 600] [--concurrency 64]
                                 [--rounds 5] [--env NAME=VALUE ...] [--base-env NAME=VALUE ...]
                                 [--out DIR]

Both servers run side by side on the demo model (fp32), each from its own source tree (REV is
exported with `git archive`). Outputs: each of `--texts` real sentences alone, one request at a
time over the Unix socket, through `/v1/embeddings` (base64: the float32 bytes) and through
`/v1/predict` with `normalize: false`; the two servers' answers must be identical (where a change
may legitimately round differently, as padding to shape buckets does, the least cosine of the
pooled vectors says by how much). Throughput:
`--rounds` closed-loop runs of `--concurrency` clients over the socket on `--requests` sentences,
base and working tree taking turns (the order alternating), seconds apart; each round's ratio
(working tree / base) and their median are the figure. `--env` and `--base-env` add variables to
one server's environment (an allocator setting, a SIDECAR_* one), so one tree can be compared
with itself under two settings (`--base HEAD`). Writes benchmarks/results/compare.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Served, closed_loop, corpus, predict_bodies, serve


def export(revision: str, directory: Path) -> str:
    """Write the tracked files of `revision` into `directory`; return its full commit hash."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return commit


async def outputs(server: Served, texts: list[str]) -> list[tuple[str, Any]]:
    """Each text alone: its embedding's float32 bytes (base64) and its raw pooled vector."""
    session, base = server.session("uds")
    answers = []
    async with session:
        for text in texts:
            body = {"input": text, "encoding_format": "base64", "truncate": True}
            async with session.post(f"{base}/v1/embeddings", json=body) as r:
                r.raise_for_status()
                encoded = (await r.json())["data"][0]["embedding"]
            body = {"inputs": [text], "parameters": {"truncate": True, "normalize": False}}
            async with session.post(f"{base}/v1/predict", json=body) as r:
                r.raise_for_status()
                raw = (await r.json())["results"][0]["embedding"]
            answers.append((encoded, raw))
    return answers


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def throughput(server: Served, bodies: list[dict[str, Any]], concurrency: int) -> float:
    session, base = server.session("uds")
    async with session:
        url = f"{base}/v1/predict"
        await closed_loop(session, url, bodies[:64], 8)  # warm the connection pool
        result = await closed_loop(session, url, bodies, concurrency)
    if result.errors:
        raise RuntimeError(f"failed requests: {result.errors}")
    return float(result.summary()["throughput_per_s"])


async def compare(args: argparse.Namespace, base_root: Path) -> dict[str, Any]:
    env = {"SIDECAR_DTYPE": "float32"}
    base_env, work_env = env | dict(args.base_env), env | dict(args.env)
    texts = corpus(args.texts, seed=11)
    bodies = predict_bodies(corpus(args.requests))
    with tempfile.TemporaryDirectory(prefix="cmp-", dir="/tmp") as sockets:
        async with (
            serve(base_env, sockets, root=base_root, name="base") as base,
            serve(work_env, sockets, root=ROOT, name="work") as work,
        ):
            base_out, work_out = await outputs(base, texts), await outputs(work, texts)
            differ = [i for i, (a, b) in enumerate(zip(base_out, work_out, strict=True)) if a != b]
            cosines = [cosine(a[1], b[1]) for a, b in zip(base_out, work_out, strict=True)]
            rounds = []
            for round_ in range(args.rounds):
                order = (("base", base), ("work", work))
                rates: dict[str, float] = {}
                for name, server in order if round_ % 2 == 0 else reversed(order):
                    rates[name] = await throughput(server, bodies, args.concurrency)
                rounds.append(rates | {"ratio": round(rates["work"] / rates["base"], 3)})
                print(f"round {round_ + 1}: {rounds[-1]}", flush=True)
    return {
        "outputs": {
            "texts": len(texts),
            "identical": len(texts) - len(differ),
            "differing_indices": differ[:20],
            "min_cosine": min(cosines),
        },
        "throughput": {
            "concurrency": args.concurrency,
            "requests": args.requests,
            "rounds": rounds,
            "median_ratio": statistics.median(r["ratio"] for r in rounds),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    for flag in ("--env", "--base-env"):
        parser.add_argument(
            flag, action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
            metavar="NAME=VALUE", help="a variable for that server (repeatable)",
        )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sidecar-base-") as tree:
        commit = export(args.base, Path(tree))
        report = {
            "base": commit,
            "env": {"base": dict(args.base_env), "work": dict(args.env)},
            "machine": {"cores": os.cpu_count()},
            **asyncio.run(compare(args, Path(tree))),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "compare.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
