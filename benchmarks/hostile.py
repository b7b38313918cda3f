"""What the hardening issue's hostile requests cost a served demo model, in one run.

    python -m benchmarks.hostile [--root DIR]

`sidecar serve` on the demo model in a subprocess (warm-up off, CPU). For each case: the status,
the time to the answer, the server's resident memory before, at its peak (VmHWM, reset before
the case through /proc/PID/clear_refs) and after, and the slowest `/livez` on the health port
meanwhile (probed every 20 ms from a thread of its own):
- an 8 MB input of `!` (one token a character), refused, then with `truncate`;
- five such requests in flight, then a 1 200-character request with a 1 000 ms deadline;
- four 1 MB gzip bombs that inflate to 1 GiB each, at once;
- an 8 MB body of 200 000 unknown field names.
Writes benchmarks/results/hostile.json. `--root` serves another checkout (an A/B).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import struct
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.harness import ROOT, serve
from benchmarks.probes import Prober

MB8 = 8_000_000


def gzip_bomb() -> bytes:
    """1 MB of gzip inflating to 1 GiB of zeros (the trailer's CRC is not checked here)."""
    zeros = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + block * 1024 + deflate.flush() + struct.pack("<II", 0, 1 << 30)


def memory_mb(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = round(int(rest.split()[0]) / 1024, 1)
    return values


async def measure(
    pid: int, health_port: int, case: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    before = memory_mb(pid)["VmRSS"]
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    prober = Prober({"health": health_port, "api": health_port}, 0.02)
    prober.start()
    started = time.perf_counter()
    try:
        outcome = await case()
    finally:
        prober.stop()
    elapsed = time.perf_counter() - started
    after = memory_mb(pid)
    return outcome | {
        "seconds": round(elapsed, 3),
        "rss_mb": {"before": before, "peak": after["VmHWM"], "after": after["VmRSS"]},
        "health_livez_max_ms": prober.summary()["health /livez"]["max_ms"],
    }


async def run(root: Path) -> dict[str, Any]:
    env = {"SIDECAR_DEVICE": "cpu", "SIDECAR_WARMUP": "false"}
    with tempfile.TemporaryDirectory(prefix="sc-", dir="/tmp") as socket_dir:
        async with serve(env, socket_dir, root=root) as served, aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{served.port}/v1/predict"
            pid = served.proc.pid

            async def post(body: bytes, headers: dict[str, str] | None = None) -> int:
                async with http.post(url, data=io.BytesIO(body), headers=headers) as r:
                    await r.read()
                    return r.status

            def eight_mb(truncate: bool) -> bytes:
                return orjson.dumps({"inputs": ["!" * MB8], "parameters": {"truncate": truncate}})

            async def refused() -> dict[str, Any]:
                return {"status": await post(eight_mb(False))}

            async def truncated() -> dict[str, Any]:
                return {"status": await post(eight_mb(True))}

            async def held_up() -> dict[str, Any]:
                big = [asyncio.create_task(post(eight_mb(i % 2 == 0))) for i in range(5)]
                short = orjson.dumps({"inputs": ["word " * 240], "parameters": {"truncate": True}})
                started = time.perf_counter()
                status = await post(short, {"X-Request-Timeout-Ms": "1000"})
                short_s = time.perf_counter() - started
                return {
                    "status": status,
                    "short_request_s": round(short_s, 3),
                    "eight_mb_statuses": sorted(await asyncio.gather(*big)),
                }

            bomb = gzip_bomb()

            async def bombs() -> dict[str, Any]:
                headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
                return {"statuses": await asyncio.gather(*(post(bomb, headers) for _ in range(4)))}

            fields = {f"field_{i:07d}_{'x' * 16}": 1 for i in range(200_000)}
            names = orjson.dumps({"inputs": ["x"], "k" * 1_000_000: 1, **fields})

            async def unknown_fields() -> dict[str, Any]:
                async with http.post(url, data=io.BytesIO(names)) as r:
                    return {"status": r.status, "answer_bytes": len(await r.read())}

            assert await post(orjson.dumps({"inputs": ["warm"]})) == 200
            cases = {
                "8mb_input": refused,
                "8mb_input_truncate": truncated,
                "short_request_behind_five_8mb": held_up,
                "four_gzip_bombs_1mb_to_1gib": bombs,
                "8mb_of_unknown_field_names": unknown_fields,
            }
            port = served.health_port
            return {name: await measure(pid, port, case) for name, case in cases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to serve")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    report = {"root": str(args.root)} | asyncio.run(run(args.root))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hostile.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
