"""Ray Serve peer: sentence-transformers behind a `@serve.batch` deployment, for benchmarks.serve.

    .bench-venvs/ray/bin/python benchmarks/peers/ray_server.py \
        --model /path/to/all-MiniLM-L6-v2 --port 8000 [--max-batch-size 16] \
        [--batch-wait-timeout 0.02]

POST /predict {"inputs": [text], ...} -> {"embedding": [float, ...]}  (one text per request, as
the load generator sends). GET /-/healthz (Ray Serve's proxy) answers 200 once Serve is up; the
deployment is running when this script stops blocking in `serve.run`. Starts a local, private
Ray instance (no dashboard, no usage stats) and runs offline: the model is a local directory,
never a hub id. SIGTERM shuts Serve and Ray down and exits 0.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse
import asyncio
import signal
import threading
import time
from collections.abc import Callable

import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=1)
class Embedder:
    def __init__(
        self, model_path: str, dtype: str, threads: int, max_batch_size: int, wait_s: float
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        # Ray sets OMP_NUM_THREADS to the replica's num_cpus (1): give torch the thread count
        # the other servers get by default.
        torch.set_num_threads(threads)
        self.model = SentenceTransformer(model_path, device="cpu")
        self.model.to(getattr(torch, dtype))
        self.model.encode(["warm up"] * 8)
        self.embed.set_max_batch_size(max_batch_size)
        self.embed.set_batch_wait_timeout_s(wait_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)  # replaced in __init__
    async def embed(self, texts: list[str]) -> list[list[float]]:
        # Off the replica's event loop, so requests keep queueing for the next batch meanwhile.
        vectors = await asyncio.to_thread(self.model.encode, texts, batch_size=len(texts))
        return vectors.tolist()

    async def __call__(self, request: Request) -> dict:
        inputs = (await request.json())["inputs"]
        return {"embedding": await self.embed(inputs[0] if isinstance(inputs, list) else inputs)}


def _bounded(fn: Callable[[], object], seconds: float) -> str:
    """Run `fn` in a daemon thread for at most `seconds`: "ok", "failed" or "timed out"."""
    outcome = ["timed out"]

    def call() -> None:
        try:
            fn()
            outcome[0] = "ok"
        except Exception:
            outcome[0] = "failed"

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    return outcome[0]


def _stop(*_: object) -> None:
    # Orderly when only this process is signalled (what run_peer does for this peer): Serve and
    # its actors first, then the local Ray instance this script started (gcs_server, raylet,
    # workers). Bounded, so a SIGTERM to the whole group (the daemons already going) still exits.
    serve_down = _bounded(serve.shutdown, 10)
    ray_down = _bounded(ray.shutdown, 15)
    print(f"stopped: serve.shutdown {serve_down}, ray.shutdown {ray_down}", flush=True)
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local model directory")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-timeout", type=float, default=0.02)
    parser.add_argument("--max-ongoing-requests", type=int, default=256)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    cpus = len(os.sched_getaffinity(0))
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    signal.signal(signal.SIGTERM, _stop)  # after ray.init, which installs its own
    signal.signal(signal.SIGINT, _stop)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app = Embedder.options(
        ray_actor_options={"num_cpus": 1},
        # Ray's default (5) would cap every batch at 5: let requests queue at the replica.
        max_ongoing_requests=max(args.max_ongoing_requests, args.max_batch_size),
    ).bind(args.model, args.dtype, args.threads, args.max_batch_size, args.batch_wait_timeout)
    serve.run(app, name="embed", route_prefix="/predict")
    print(f"ray serve ready on 127.0.0.1:{args.port}/predict", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
