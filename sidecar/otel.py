"""Spans of a request's way through the sidecar, recorded with the OpenTelemetry SDK.

Imported only when tracing is on (`sidecar.tracing`). Every request on the inference listeners
(the probes and /metrics excepted) gets a server span, continuing the caller's trace when it
sends a W3C `traceparent`. The batcher reports each forward batch after the fact (`BatchStats`,
on the event loop), and its spans are recorded then, with the times the batcher measured:

    POST /v1/predict     server span, one per request
      queue              the request's items waiting in the batcher's queue (one per batch that
                         took some of them)
      batch              a forward batch: collation, the wait for the device, the pass; a child
        forward          of the request of its oldest item and linked to the request span of
                         every item it holds, since one batch serves many requests

Spans end on the event loop and are exported by the SDK's BatchSpanProcessor on its own thread;
nothing here blocks or touches the network. The provider is the sidecar's own (no global state):
the SDK reads the other OTEL_* variables itself (sampler, headers, batch processor limits).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, StatusCode

from batching import BatchObserver, BatchStats
from sidecar import __version__
from sidecar.api import health
from sidecar.api.wire import Handler
from sidecar.config import Tracing
from sidecar.middleware import CLIENT_GONE, TRACE_ID, UNMATCHED, request_id

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "sidecar"
# What exit waits for the last spans to be exported (the exporter's own timeout is 10 s).
CLOSE_TIMEOUT_S = 3.0
# Probes and scrapes come every few seconds and say nothing about inference: not traced.
UNTRACED = frozenset(route.path for route in health.routes())


class Tracer:
    """The sidecar's tracer provider, its request middleware and its batch observer.

    Args:
        settings: where spans go.
        exporter: replaces the OTLP exporter (for a test).
    """

    def __init__(self, settings: Tracing, *, exporter: SpanExporter | None = None) -> None:
        # Closed by the server (`close`); at interpreter exit the SDK's own hook could wait on
        # an unreachable collector.
        self._provider = TracerProvider(
            resource=_resource(settings.service_name), shutdown_on_exit=False
        )
        self._provider.add_span_processor(
            BatchSpanProcessor(exporter or OTLPSpanExporter(endpoint=settings.endpoint))
        )
        self._tracer = self._provider.get_tracer("sidecar", __version__)

    def middleware(self) -> Middleware:
        """The server span of each request; outermost, so that it sees the status sent."""
        tracer = self._tracer

        @web.middleware
        async def trace_request(request: web.Request, handler: Handler) -> web.StreamResponse:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else UNMATCHED
            if route in UNTRACED:
                return await handler(request)
            span = tracer.start_span(
                f"{request.method} {route}",
                context=propagate.extract(request.headers),
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": request.method,
                    "http.route": route,
                    "url.path": request.path,
                    "sidecar.request_id": request_id(request),
                },
            )
            request[TRACE_ID] = trace.format_trace_id(span.get_span_context().trace_id)
            # Errors are answers by now (the error middleware is inside this one); a
            # cancellation is a client that went away.
            status = 500
            with trace.use_span(
                span, end_on_exit=True, record_exception=False, set_status_on_exception=False
            ):
                try:
                    response = await handler(request)
                    status = response.status
                    return response
                except asyncio.CancelledError:
                    status = CLIENT_GONE
                    raise
                finally:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)

        return trace_request

    def observer(self, inner: BatchObserver) -> BatchObserver:
        """`inner` (the metrics), plus the queue, batch and forward spans of every batch."""
        return _SpanObserver(self._tracer, inner)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Export what has ended (blocks: call it off the event loop)."""
        return self._provider.force_flush(int(timeout_s * 1000))

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Export what is left and stop the exporting thread, waiting `timeout_s` at most: a
        collector that is down must not hold up the exit (its spans are then dropped)."""
        done = threading.Event()

        def shutdown() -> None:
            try:
                self._provider.shutdown()
            finally:
                done.set()

        # A daemon thread: the process may exit while it still waits on the collector.
        threading.Thread(target=shutdown, name="otel-shutdown", daemon=True).start()
        if not await asyncio.to_thread(done.wait, timeout_s):
            logger.warning("tracing: the last spans were not exported within %g s", timeout_s)


def _resource(service_name: str | None) -> Resource:
    # OTEL_SERVICE_NAME, else a service.name in OTEL_RESOURCE_ATTRIBUTES, else ours.
    resource = Resource.create({SERVICE_VERSION: __version__})
    given = str(resource.attributes.get(SERVICE_NAME, ""))
    name = service_name or (None if given.startswith("unknown_service") else given)
    return resource.merge(Resource({SERVICE_NAME: name or DEFAULT_SERVICE_NAME}))


@dataclass
class _Request:
    """One request's share of a batch: its span and its items' queue times."""

    span: Span
    queue_s: list[float] = field(default_factory=list)


class _SpanObserver(BatchObserver):
    def __init__(self, tracer: trace.Tracer, inner: BatchObserver) -> None:
        self._tracer = tracer
        self._inner = inner

    def on_submit(self) -> object:
        # Called in the request's task: the current span is its server span.
        span = trace.get_current_span()
        return span if span.get_span_context().is_valid else None

    def on_reject(self, reason: str, count: int) -> None:
        self._inner.on_reject(reason, count)

    def on_batch(self, stats: BatchStats) -> None:
        self._inner.on_batch(stats)
        requests: dict[int, _Request] = {}
        for tag, queue_s in zip(stats.tags, stats.queue_s, strict=True):
            if isinstance(tag, Span) and tag.get_span_context().trace_flags.sampled:
                requests.setdefault(id(tag), _Request(tag)).queue_s.append(queue_s)
        if not requests:
            return  # a batch of unsampled requests (or none) is not recorded either
        # The batcher's clock is monotonic; spans want the wall clock in nanoseconds.
        offset_ns = time.time_ns() - time.monotonic_ns()

        def wall_ns(monotonic_s: float) -> int:
            return offset_ns + int(monotonic_s * 1e9)

        oldest = max(requests.values(), key=lambda r: max(r.queue_s))
        batch = self._tracer.start_span(
            "batch",
            context=trace.set_span_in_context(oldest.span),
            attributes=_batch_attributes(stats, len(requests)),
            links=[
                Link(r.span.get_span_context(), {"sidecar.batch.items": len(r.queue_s)})
                for r in requests.values()
            ],
            start_time=wall_ns(stats.dispatched_at),
        )
        in_batch = trace.set_span_in_context(batch)
        forward = self._tracer.start_span(
            "forward",
            context=in_batch,
            attributes={"sidecar.batch.size": stats.size},
            start_time=wall_ns(stats.started_at),
        )
        forward.end(wall_ns(stats.started_at + stats.inference_s))
        for request in requests.values():
            queue = self._tracer.start_span(
                "queue",
                context=trace.set_span_in_context(request.span),
                attributes={"sidecar.batch.items": len(request.queue_s)},
                links=[Link(batch.get_span_context())],
                start_time=wall_ns(stats.dispatched_at - max(request.queue_s)),
            )
            queue.end(wall_ns(stats.dispatched_at))
        batch.end()


def _batch_attributes(stats: BatchStats, num_requests: int) -> Mapping[str, int | float]:
    return {
        "sidecar.batch.size": stats.size,
        "sidecar.batch.requests": num_requests,
        "sidecar.batch.padded_tokens": stats.padded_tokens,
        "sidecar.batch.real_tokens": stats.real_tokens,
        "sidecar.batch.padding_ratio": stats.padding_ratio,
    }
