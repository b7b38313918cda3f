"""Tracing: spans exported over real OTLP/HTTP to a real receiver, and nothing when it is off."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from batching import BatchObserver
from sidecar.config import Settings, Tracing
from sidecar.errors import ConfigError
from sidecar.logs import JsonFormatter
from sidecar.otel import Tracer
from tests.sidecar.conftest import Running, StartServer

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: what an OpenTelemetry Collector listens for on 4318."""

    url: str
    spans: list[Span] = field(default_factory=list)
    resources: list[dict[str, str]] = field(default_factory=list)
    content_types: set[str] = field(default_factory=set)
    # Cleared, an export is held unanswered (a stuck collector) until it is set again.
    answering: asyncio.Event = field(default_factory=asyncio.Event)
    exports: int = 0

    def named(self, name: str, trace_id: str = TRACE_ID) -> list[Span]:
        return [s for s in self.spans if s.name == name and s.trace_id.hex() == trace_id]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    received = Receiver("")
    received.answering.set()

    async def traces(request: web.Request) -> web.Response:
        received.exports += 1
        await received.answering.wait()
        received.content_types.add(request.content_type)
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            attributes = resource_spans.resource.attributes
            received.resources.append({a.key: a.value.string_value for a in attributes})
            for scope_spans in resource_spans.scope_spans:
                received.spans.extend(scope_spans.spans)
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    received.url = f"http://127.0.0.1:{port}"
    yield received
    await runner.cleanup()


def attributes(span: Span) -> dict[str, object]:
    values: dict[str, object] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        values[a.key] = getattr(a.value, kind) if kind else None
    return values


async def traced_server(
    start_server: StartServer, model: Path, rx: Receiver, **env: str
) -> Running:
    return await start_server(model, OTEL_EXPORTER_OTLP_ENDPOINT=rx.url, **env)


async def exported(s: Running) -> None:
    """Everything ended so far, exported (the exporter blocks: off the loop, as in the server)."""
    assert s.server.tracer is not None
    assert await asyncio.to_thread(s.server.tracer.flush)


async def test_a_request_continues_the_callers_trace_with_queue_batch_and_forward_spans(
    start_server: StartServer, tiny_embed_dir: Path, receiver: Receiver, caplog
) -> None:
    s = await traced_server(start_server, tiny_embed_dir, receiver, OTEL_SERVICE_NAME="embedder")
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    with caplog.at_level(logging.INFO, logger="sidecar.access"):
        r = await s.tcp.post(
            "/v1/predict",
            json={"inputs": ["hello world", "a second one"]},
            headers={"traceparent": traceparent, "X-Request-Id": "req-1"},
        )
        assert r.status == 200
        await r.read()
    await exported(s)

    # The server span: a child of the caller's span, in the caller's trace.
    (server,) = receiver.named("POST /v1/predict")
    assert server.parent_span_id.hex() == PARENT_ID
    assert server.kind == Span.SPAN_KIND_SERVER
    assert attributes(server) == {
        "http.request.method": "POST",
        "http.route": "/v1/predict",
        "url.path": "/v1/predict",
        "sidecar.request_id": "req-1",
        "http.response.status_code": 200,
    }
    # Its two items waited in the queue, then went through one batch and one forward pass.
    (queue,) = receiver.named("queue")
    assert queue.parent_span_id == server.span_id
    assert attributes(queue) == {"sidecar.batch.items": 2}
    (batch,) = receiver.named("batch")
    assert batch.parent_span_id == server.span_id  # the request of its oldest item
    assert [(link.trace_id.hex(), link.span_id) for link in batch.links] == [
        (TRACE_ID, server.span_id)
    ]
    assert [link.span_id for link in queue.links] == [batch.span_id]
    batch_attributes = attributes(batch)
    assert batch_attributes["sidecar.batch.size"] == 2
    assert batch_attributes["sidecar.batch.requests"] == 1
    assert (
        0
        < batch_attributes["sidecar.batch.real_tokens"]
        <= (  # type: ignore[operator]
            batch_attributes["sidecar.batch.padded_tokens"]
        )
    )
    (forward,) = receiver.named("forward")
    assert forward.parent_span_id == batch.span_id
    # Times nest: the wait, then the batch, the pass inside it, all within the request.
    assert server.start_time_unix_nano <= queue.start_time_unix_nano
    assert queue.end_time_unix_nano <= batch.start_time_unix_nano + 1000
    assert batch.start_time_unix_nano <= forward.start_time_unix_nano
    assert forward.start_time_unix_nano < forward.end_time_unix_nano <= batch.end_time_unix_nano
    assert batch.end_time_unix_nano <= server.end_time_unix_nano

    assert receiver.content_types == {"application/x-protobuf"}
    assert {r["service.name"] for r in receiver.resources} == {"embedder"}
    # The access-log line names the trace, in the JSON log format too.
    (line,) = [rec for rec in caplog.records if rec.name == "sidecar.access"]
    assert line.__dict__["trace_id"] == TRACE_ID
    logged = json.loads(JsonFormatter().format(line))
    assert (logged["request_id"], logged["trace_id"]) == ("req-1", TRACE_ID)


async def test_one_batch_serving_three_requests_links_each_of_them(
    start_server: StartServer, tiny_embed_dir: Path, receiver: Receiver
) -> None:
    # The batch closes only with three items (or after twice the window): one batch for all.
    s = await traced_server(
        start_server,
        tiny_embed_dir,
        receiver,
        SIDECAR_BATCH_MIN_SIZE="3",
        SIDECAR_BATCH_WINDOW_MS="1000",
        SIDECAR_BATCH_ADAPTIVE="false",
    )
    traces = [f"{i:032x}" for i in range(1, 4)]

    async def call(trace_id: str) -> None:
        headers = {"traceparent": f"00-{trace_id}-{PARENT_ID}-01"}
        r = await s.tcp.post("/v1/embeddings", json={"input": "hi"}, headers=headers)
        assert r.status == 200
        await r.read()

    await asyncio.gather(*(call(t) for t in traces))
    await exported(s)
    servers = {t: receiver.named("POST /v1/embeddings", t)[0] for t in traces}
    (batch,) = [span for span in receiver.spans if span.name == "batch"]
    linked = {(link.trace_id.hex(), link.span_id) for link in batch.links}
    assert linked == {(t, span.span_id) for t, span in servers.items()}
    assert attributes(batch)["sidecar.batch.requests"] == 3
    # A child of one of them; each request's own queue span points at the batch.
    assert batch.parent_span_id in {span.span_id for span in servers.values()}
    for t, server in servers.items():
        (queue,) = receiver.named("queue", t)
        assert queue.parent_span_id == server.span_id
        assert [link.span_id for link in queue.links] == [batch.span_id]
    (forward,) = [span for span in receiver.spans if span.name == "forward"]
    assert forward.parent_span_id == batch.span_id


async def test_errors_are_spans_too_and_probes_are_not_traced(
    start_server: StartServer, tiny_embed_dir: Path, receiver: Receiver
) -> None:
    s = await traced_server(start_server, tiny_embed_dir, receiver)
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    r = await s.tcp.post("/v1/predict", data=b"{not json", headers=headers)
    assert r.status == 400
    for probe in ("/livez", "/readyz", "/metrics"):
        assert (await s.tcp.get(probe, headers=headers)).status == 200
    # Without a traceparent a request starts a trace of its own.
    r = await s.uds.post("/v1/predict", json={"inputs": ["x"]})
    assert r.status == 200
    await exported(s)
    (failed,) = receiver.named("POST /v1/predict")
    assert attributes(failed)["http.response.status_code"] == 400
    assert failed.status.code == failed.status.STATUS_CODE_UNSET  # a client error, not ours
    assert not receiver.named("queue")  # refused before it reached the batcher
    (own,) = [sp for sp in receiver.spans if sp.name == "POST /v1/predict" and sp is not failed]
    assert own.trace_id.hex() != TRACE_ID and not own.parent_span_id
    assert {sp.name for sp in receiver.spans} == {"POST /v1/predict", "queue", "batch", "forward"}


async def test_a_client_that_went_away_is_a_499_span(
    start_server: StartServer, tiny_embed_dir: Path, receiver: Receiver
) -> None:
    # A lone item waits for company for up to twice the window; the client gives up first.
    s = await traced_server(
        start_server,
        tiny_embed_dir,
        receiver,
        SIDECAR_BATCH_MIN_SIZE="2",
        SIDECAR_BATCH_WINDOW_MS="1000",
        SIDECAR_BATCH_ADAPTIVE="false",
    )
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await s.tcp.post("/v1/predict", json={"inputs": ["x"]}, headers=headers)
    async with asyncio.timeout(10):
        while not receiver.named("POST /v1/predict"):
            await exported(s)
    (server,) = receiver.named("POST /v1/predict")
    assert attributes(server)["http.response.status_code"] == 499
    assert server.status.code == server.status.STATUS_CODE_UNSET
    assert not receiver.named("batch")  # its item was dropped before any forward pass


async def test_a_stuck_collector_holds_up_no_request(
    start_server: StartServer, tiny_embed_dir: Path, receiver: Receiver
) -> None:
    s = await traced_server(start_server, tiny_embed_dir, receiver)
    assert s.server.tracer is not None
    assert (await s.tcp.post("/v1/predict", json={"inputs": ["first"]})).status == 200
    receiver.answering.clear()
    flushing = asyncio.create_task(asyncio.to_thread(s.server.tracer.flush))
    async with asyncio.timeout(10):
        while not receiver.exports:  # noqa: ASYNC110 (the exporter's thread posts it)
            await asyncio.sleep(0.01)
    # The export hangs on its own thread; requests are served (and traced) meanwhile.
    for i in range(20):
        started = time.perf_counter()
        r = await s.uds.post("/v1/predict", json={"inputs": [f"text {i}"]})
        assert r.status == 200
        assert time.perf_counter() - started < 1.0
    assert not flushing.done()
    receiver.answering.set()
    assert await flushing
    await exported(s)
    assert len([sp for sp in receiver.spans if sp.name == "POST /v1/predict"]) == 21


async def test_exit_waits_for_a_collector_that_never_answers_a_bounded_time(caplog) -> None:
    # A listener that never accepts: the export connects, then waits for an answer.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        tracer = Tracer(Tracing(f"http://127.0.0.1:{port}/v1/traces"))
        tracer.observer(BatchObserver())  # as the server builds it
        span = tracer._tracer.start_span("a span that cannot be delivered")
        span.end()
        started = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="sidecar.otel"):
            await tracer.close(timeout_s=0.5)
        assert time.perf_counter() - started < 2.0
    assert "not exported within 0.5 s" in caplog.text


async def test_a_trace_the_caller_did_not_sample_is_not_recorded(
    start_server: StartServer, tiny_embed_dir: Path, receiver: Receiver, caplog
) -> None:
    s = await traced_server(start_server, tiny_embed_dir, receiver)
    with caplog.at_level(logging.INFO, logger="sidecar.access"):
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
        r = await s.tcp.post("/v1/predict", json={"inputs": ["x"]}, headers=headers)
        assert r.status == 200
    await exported(s)
    assert receiver.spans == []
    # The log still names the caller's trace, so its logs and ours can be joined.
    (line,) = [rec for rec in caplog.records if rec.name == "sidecar.access"]
    assert line.__dict__["trace_id"] == TRACE_ID


async def test_without_an_endpoint_there_is_no_tracer_and_no_trace_id(
    start_server: StartServer, tiny_embed_dir: Path, caplog
) -> None:
    s = await start_server(tiny_embed_dir)
    assert s.server.tracer is None
    with caplog.at_level(logging.INFO, logger="sidecar.access"):
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        assert (await s.tcp.post("/v1/predict", json={"inputs": ["x"]}, headers=headers)).ok
    (line,) = [rec for rec in caplog.records if rec.name == "sidecar.access"]
    assert "trace_id" not in line.__dict__


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_without_an_endpoint_opentelemetry_is_never_imported() -> None:
    result = run_python(
        "import sys\n"
        "from sidecar.config import Settings\n"
        "from sidecar.server import Server\n"
        "server = Server(Settings.from_env({'SIDECAR_DEVICE': 'cpu'}))\n"
        "assert server.tracer is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_an_endpoint_without_the_extra_installed_warns_and_serves_untraced() -> None:
    # A None entry in sys.modules makes `import opentelemetry` fail as if it were absent.
    result = run_python(
        "import logging, sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from sidecar.config import Settings\n"
        "from sidecar.server import Server\n"
        "env = {'SIDECAR_DEVICE': 'cpu', 'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://127.0.0.1:9'}\n"
        "assert Server(Settings.from_env(env)).tracer is None\n"
    )
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1
    assert "OTEL_EXPORTER_OTLP_ENDPOINT is set" in warning[0]
    assert "model-sidecar[tracing]" in warning[0]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
            Tracing("http://collector:4318/v1/traces"),
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example/otlp/", "OTEL_SERVICE_NAME": "e"},
            Tracing("https://c.example/otlp/v1/traces", "e"),
        ),
        # The signal's own endpoint is used as given, and wins.
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:4318/traces",
            },
            Tracing("http://b:4318/traces"),
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
        # The protocol of the app beside us does not matter while the sidecar does not trace.
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, None),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            Tracing("http://c:4318/v1/traces"),
        ),
    ],
)
def test_tracing_settings(environ: dict[str, str], expected: Tracing | None) -> None:
    assert Settings.from_env(environ).tracing == expected


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://c/"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "zipkin"},
            "OTEL_TRACES_EXPORTER",
        ),
    ],
)
def test_tracing_settings_the_sidecar_cannot_serve_stop_start_up(
    environ: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    assert variable in str(info.value)


def test_info_shows_the_endpoint_without_its_credentials() -> None:
    settings = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:secret@c:4318"})
    assert settings.public()["tracing"] == {
        "endpoint": "https://<redacted>@c:4318/v1/traces",
        "service_name": None,
    }
    assert Settings.from_env({}).public()["tracing"] is None
