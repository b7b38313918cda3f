"""Probe latency while the device is saturated: `/livez` and `/readyz` on the health port.

    python -m benchmarks.probes [--seconds 30] [--concurrency 64] [--every-ms 50] [--root DIR]

`sidecar serve` on the demo model in a subprocess; C closed-loop clients keep the device busy
over the Unix socket (one real sentence per request, so the event loop handles many requests
too); meanwhile a prober in a thread of its own asks `/livez` and `/readyz` on the health port
every `every-ms`, a new connection each time as the kubelet does, and, in turn, the same
`/livez` on the inference TCP listener (served by the main event loop: the comparison says what
the health port's own loop and thread buy). Reports p50/p99/max per probe and the load's
throughput; writes benchmarks/results/probes.json. `--root` serves another checkout of the project
(an A/B against a commit from before the health port had its own loop).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, closed_loop, corpus, predict_bodies, serve

PROBES = (("health", "/livez"), ("health", "/readyz"), ("api", "/livez"))


class Prober:
    """Probes each of `PROBES` in turn from its own thread until stopped."""

    def __init__(self, ports: dict[str, int], every_s: float) -> None:
        self.ports = ports
        self.every_s = every_s
        self.latencies: dict[str, list[float]] = {f"{p} {path}": [] for p, path in PROBES}
        self.failures: dict[str, int] = dict.fromkeys(self.latencies, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for port_name, path in PROBES:
                key = f"{port_name} {path}"
                started = time.perf_counter()
                connection = http.client.HTTPConnection(
                    "127.0.0.1", self.ports[port_name], timeout=10
                )
                try:
                    connection.request("GET", path)
                    response = connection.getresponse()
                    response.read()
                    ok = response.status == 200
                except OSError:
                    ok = False
                finally:
                    connection.close()
                self.latencies[key].append(time.perf_counter() - started)
                self.failures[key] += not ok
                self._stop.wait(self.every_s)

    def summary(self) -> dict[str, Any]:
        out = {}
        for key, values in self.latencies.items():
            ordered = sorted(values)

            def pct(p: float, ordered: list[float] = ordered) -> float | None:
                index = min(len(ordered) - 1, int(len(ordered) * p))
                return round(ordered[index] * 1000, 2) if ordered else None

            out[key] = {
                "probes": len(ordered),
                "failures": self.failures[key],
                "p50_ms": pct(0.5),
                "p99_ms": pct(0.99),
                "max_ms": round(ordered[-1] * 1000, 2) if ordered else None,
            }
        return out


async def run(seconds: float, concurrency: int, every_s: float, root: Path) -> dict[str, Any]:
    texts = corpus(4000)
    with tempfile.TemporaryDirectory(prefix="sc-", dir="/tmp") as socket_dir:
        async with serve({"SIDECAR_DEVICE": "cpu"}, socket_dir, root=root) as served:
            session, base = served.session("uds")
            url = f"{base}/v1/predict"
            async with session:
                await closed_loop(session, url, predict_bodies(texts[:64]), concurrency)
                idle = Prober({"health": served.health_port, "api": served.port}, every_s)
                idle.start()
                await asyncio.sleep(min(5.0, seconds / 4))
                idle.stop()
                # Closed loop, a slice of the corpus at a time, until `seconds` have passed.
                prober = Prober({"health": served.health_port, "api": served.port}, every_s)
                prober.start()
                load_started = time.perf_counter()
                results, start = [], 0
                while time.perf_counter() - load_started < seconds:
                    bodies = predict_bodies(texts[start : start + 4 * concurrency])
                    start = (start + 4 * concurrency) % (len(texts) - 4 * concurrency)
                    results.append(await closed_loop(session, url, bodies, concurrency))
                prober.stop()
    ok = sum(r.ok for r in results)
    elapsed = sum(r.elapsed_s for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for key, value in r.errors.items():
            errors[key] = errors.get(key, 0) + value
    return {
        "config": {
            "seconds": seconds,
            "concurrency": concurrency,
            "every_ms": every_s * 1000,
            "root": str(root),
        },
        "load": {
            "requests": sum(r.sent for r in results),
            "ok": ok,
            "errors": errors,
            "items_per_s": round(ok / elapsed, 1) if elapsed else 0.0,
        },
        "idle": idle.summary(),
        "saturated": prober.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--every-ms", type=float, default=50.0)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to serve")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    report = asyncio.run(run(args.seconds, args.concurrency, args.every_ms / 1000, args.root))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probes.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
