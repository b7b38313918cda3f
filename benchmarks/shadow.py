"""Shadow traffic: primary latency at half saturation with a 100% shadow against none, paired.

    python -m benchmarks.shadow [--rounds 3] [--requests 600] [--model DIR]

`sidecar serve` in a subprocess on a model root holding two versions of the demo model (`a`
stable, `b` the shadow; copies of the same snapshot unless --model names another one for `b`),
over the Unix socket. Saturation is measured first (closed loop, 32 clients); then each round
runs the same open-loop Poisson load at half of it twice, shadow off and shadow at 100%
(switched over the admin socket; the order alternates by round), so that drift of a shared
machine falls on both arms alike. Figures are ratios of the paired runs: p50 and p99 with the
shadow over without. Then the shadow stays on under a closed loop at saturation: copies must
be dropped, not queued. The shadow counters of /metrics are read around every run. Writes
benchmarks/results/shadow.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.harness import ROOT, Served, closed_loop, corpus, open_loop, predict_bodies, serve

OUTCOMES = ("compared", "dropped", "failed", "incomparable")


def model_root(directory: Path, stable: Path, shadow: Path) -> Path:
    """A model root with versions `a` and `b`, copied as a copy tool would (dot-dir, rename)."""
    root = directory / "root"
    for name, source in (("a", stable), ("b", shadow)):
        shutil.copytree(source, root / f".tmp-{name}")
        (root / f".tmp-{name}").rename(root / name)
    (root / "versions.json").write_text(json.dumps({"stable": "a", "resident": 2}))
    return root


async def admin(path: str, desired: dict[str, Any]) -> None:
    connector = aiohttp.UnixConnector(path=path)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.put("http://localhost/admin/v1/models/default/traffic", json=desired) as r,
    ):
        if r.status != 200:
            raise RuntimeError(f"admin traffic: {r.status} {await r.text()}")


def shadow_moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {
        outcome: after.get(f'sidecar_shadow_total{{outcome="{outcome}"}}', 0.0)
        - before.get(f'sidecar_shadow_total{{outcome="{outcome}"}}', 0.0)
        for outcome in OUTCOMES
    }


async def one_run(
    served: Served, bodies: list[dict[str, Any]], rate: float, seed: int
) -> dict[str, Any]:
    before = await served.metrics()
    session, base = served.session("uds")
    async with session:
        result = await open_loop(session, base + "/v1/predict", bodies, rate, seed=seed)
    after = await served.metrics()
    return {**result.summary(), "shadow": shadow_moved(before, after)}


async def run(rounds: int, num_requests: int, shadow_model: Path | None) -> dict[str, Any]:
    from sidecar.serving.loading import demo_model_path

    demo = demo_model_path()
    texts = corpus(num_requests * (2 * rounds + 2) + 512)
    with tempfile.TemporaryDirectory(prefix="shadow-", dir="/tmp") as scratch:
        root = model_root(Path(scratch), demo, shadow_model or demo)
        admin_path = f"{scratch}/admin.sock"
        env = {
            "SIDECAR_MODEL": str(root),
            "SIDECAR_ADMIN_UDS": admin_path,
            "SIDECAR_MODEL_POLL_S": "0",
            "SIDECAR_DEVICE": "cpu",
        }
        async with serve(env, scratch) as served:
            # Load the shadow version once; the arms only switch its share.
            await admin(admin_path, {"stable": "a", "shadow": {"version": "b", "percent": 0},
                                     "resident": 2})  # fmt: skip
            session, base = served.session("uds")
            async with session:
                await closed_loop(session, base + "/v1/predict", predict_bodies(texts[:256]), 8)
                saturated = await closed_loop(
                    session, base + "/v1/predict", predict_bodies(texts[256:512]), 32
                )
            saturation = saturated.ok / saturated.elapsed_s
            rate = saturation / 2
            offset = 512
            paired: list[dict[str, Any]] = []
            for index in range(rounds):
                arms = ("off", "on") if index % 2 == 0 else ("on", "off")
                runs: dict[str, Any] = {}
                for arm in arms:
                    percent = 100 if arm == "on" else 0
                    shadow = {"version": "b", "percent": percent}
                    await admin(admin_path, {"stable": "a", "resident": 2, "shadow": shadow})
                    bodies = predict_bodies(texts[offset : offset + num_requests])
                    offset += num_requests
                    runs[arm] = await one_run(served, bodies, rate, seed=index)
                runs["p50_ratio"] = round(runs["on"]["p50_ms"] / runs["off"]["p50_ms"], 3)
                runs["p99_ratio"] = round(runs["on"]["p99_ms"] / runs["off"]["p99_ms"], 3)
                paired.append(runs)
            await admin(admin_path, {"stable": "a", "resident": 2,
                                     "shadow": {"version": "b", "percent": 100}})  # fmt: skip
            before = await served.metrics()
            session, base = served.session("uds")
            async with session:
                bodies = predict_bodies(texts[offset : offset + num_requests])
                saturating = await closed_loop(session, base + "/v1/predict", bodies, 64)
            after = await served.metrics()
    return {
        "model": "demo all-MiniLM-L6-v2 as versions a (stable) and b (shadow)",
        "saturation_per_s": round(saturation, 1),
        "half_saturation_rate_per_s": round(rate, 1),
        "rounds": paired,
        "median_p99_ratio": statistics.median(r["p99_ratio"] for r in paired),
        "median_p50_ratio": statistics.median(r["p50_ratio"] for r in paired),
        "saturated_with_shadow": {
            **saturating.summary(),
            "shadow": shadow_moved(before, after),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=600, help="requests per run")
    parser.add_argument("--model", type=Path, help="the shadow version's snapshot (default: demo)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shadow.json")
    args = parser.parse_args()
    report = asyncio.run(run(args.rounds, args.requests, args.model))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
