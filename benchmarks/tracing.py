"""Tracing: what a request pays with OTEL_EXPORTER_OTLP_ENDPOINT set, against tracing off.

    python -m benchmarks.tracing [--model tiny|demo] [--requests 400] [--rounds 3]
                                 [--concurrency 1,16]

First, in this process, what the tracing code itself costs per request, in CPU time over a few
thousand requests (no model, no HTTP): the server span with a `traceparent`, the queue span, and a
one-item batch's batch and forward spans, recorded as `sidecar.otel` records them; then also
encoded as the OTLP exporter encodes them (on its own thread in the server); and for a request the
sampler drops (`OTEL_TRACES_SAMPLER=always_off`: a non-recording server span, nothing else).

Then two `sidecar serve` subprocesses on the same model, up at once: one untraced, one exporting to
an OTLP/HTTP receiver in this process (it decodes every export and counts the spans, as a collector
would). `tiny` is the tests' 2-layer BERT (a forward pass of about a millisecond, so that the
request path itself dominates: the worst case for a relative overhead); `demo` the demo model. Each
round sends the same corpus sentences, one a request over the Unix socket, to each server in turn
(the order alternates between rounds), with 1 and with 16 closed-loop clients. Per server and
round: latency, throughput and the server's CPU time per request (utime + stime of the process,
every thread, the exporting one included), the figure least moved by a shared machine; both servers
run torch on one thread (OMP_NUM_THREADS=1), since spinning OpenMP workers on a contended machine
would bury the difference in CPU time. Medians over the rounds, and their ratio traced / untraced.
Writes benchmarks/results/tracing-<model>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from benchmarks.harness import ROOT, Served, closed_loop, corpus, predict_bodies, serve

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


class Receiver:
    """An OTLP/HTTP trace receiver on a free port that counts what it is sent."""

    def __init__(self) -> None:
        self.spans = 0
        self.exports = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        reply = ExportTraceServiceResponse().SerializeToString()

        async def traces(request: web.Request) -> web.Response:
            export = ExportTraceServiceRequest.FromString(await request.read())
            self.exports += 1
            self.spans += sum(
                len(scope.spans) for rs in export.resource_spans for scope in rs.scope_spans
            )
            return web.Response(body=reply, content_type="application/x-protobuf")

        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/traces", traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def one_round(
    served: Served, bodies: list[dict[str, Any]], concurrency: int
) -> dict[str, float]:
    session, base = served.session("uds")
    before = cpu_s(served.proc.pid)
    async with session:
        result = await closed_loop(session, base + "/v1/predict", bodies, concurrency)
    cpu = cpu_s(served.proc.pid) - before
    assert result.ok == len(bodies), result.errors
    summary = result.summary()
    return {
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "throughput_per_s": summary["throughput_per_s"],
        "cpu_ms_per_request": round(1000 * cpu / len(bodies), 3),
    }


def span_cost(num_requests: int = 3000) -> dict[str, float]:
    """CPU microseconds per request of the tracing code: recorded, recorded and encoded,
    sampled out."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from batching import BatchObserver, BatchStats
    from sidecar.config import Tracing
    from sidecar.otel import Tracer

    class Sink(SpanExporter):
        def __init__(self, encode: bool) -> None:
            self.encode = encode

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if self.encode:
                encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    async def requests(tracer: Tracer) -> float:
        # The middleware and the observer as the server runs them, around a stand-in handler.
        observer = tracer.observer(BatchObserver())

        async def handler(request: web.Request) -> web.StreamResponse:
            tag = observer.on_submit()
            now = time.monotonic()
            observer.on_batch(BatchStats(1, 12, 12, (0.001,), 0.0, 0.001, (tag,), now, now))
            return web.Response()

        app = web.Application()
        app.router.add_post("/v1/predict", handler)
        headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
        made = [make_mocked_request("POST", "/v1/predict", headers, app=app) for _ in range(16)]
        for request in made:  # resolved, as the server's are when the middleware runs
            request._match_info = await app.router.resolve(request)  # type: ignore[attr-defined]
        middleware = tracer.middleware()
        started = time.process_time()
        for i in range(num_requests):
            await middleware(made[i % len(made)], handler)
        await asyncio.to_thread(tracer.flush)
        return (time.process_time() - started) / num_requests * 1e6

    figures = {}
    for name, encode, sampler in (
        ("recorded_us", False, None),
        ("recorded_and_encoded_us", True, None),
        ("sampled_out_us", True, "always_off"),
    ):
        if sampler is not None:
            os.environ["OTEL_TRACES_SAMPLER"] = sampler
        try:
            tracer = Tracer(Tracing("http://127.0.0.1:9/v1/traces"), exporter=Sink(encode))
        finally:
            os.environ.pop("OTEL_TRACES_SAMPLER", None)
        figures[name] = round(asyncio.run(requests(tracer)), 1)
        asyncio.run(tracer.close())
    return figures


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]}


async def run(
    model: str, num_requests: int, num_rounds: int, concurrencies: list[int]
) -> dict[str, Any]:
    bodies = predict_bodies(corpus(num_requests))
    receiver = Receiver()
    await receiver.start()
    report: dict[str, Any] = {
        "model": model,
        "requests_per_round": num_requests,
        "rounds": num_rounds,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
    }
    try:
        with tempfile.TemporaryDirectory(prefix="trc-", dir="/tmp") as socket_dir:
            env = {"OMP_NUM_THREADS": "1"}
            if model == "tiny":
                from tests.snapshots import make_bert_snapshot

                env["SIDECAR_MODEL"] = str(make_bert_snapshot(Path(socket_dir) / "tiny"))
            traced_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
            async with (
                serve(env, socket_dir, name="off") as off,
                serve(traced_env, socket_dir, name="on") as on,
            ):
                servers = {"off": off, "on": on}
                for served in servers.values():  # warm both: first requests pay for imports
                    await one_round(served, bodies[:64], 4)
                for concurrency in concurrencies:
                    rounds: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
                    spans_before = receiver.spans
                    for i in range(num_rounds):
                        for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                            rounds[name].append(await one_round(servers[name], bodies, concurrency))
                    figures = {name: medians(r) for name, r in rounds.items()}
                    figures["on_over_off"] = {
                        key: round(figures["on"][key] / figures["off"][key], 3)
                        for key in figures["off"]
                        if figures["off"][key]
                    }
                    figures["rounds"] = rounds
                    # Spans arrive up to OTEL_BSP_SCHEDULE_DELAY (5 s) after they end.
                    await asyncio.sleep(6)
                    figures["spans_per_request"] = round(
                        (receiver.spans - spans_before) / (num_rounds * num_requests), 2
                    )
                    report[f"concurrency_{concurrency}"] = figures
                    print(json.dumps({concurrency: figures}, indent=1), flush=True)
    finally:
        await receiver.stop()
    report["exports"] = receiver.exports
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "demo"), default="tiny")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/tracing-MODEL.json")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cost = span_cost()
    print(json.dumps({"span_cost": cost}), flush=True)
    report = {
        "span_cost": cost,
        **asyncio.run(run(args.model, args.requests, args.rounds, concurrencies)),
    }
    args.out = args.out or ROOT / f"benchmarks/results/tracing-{args.model}.json"
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
