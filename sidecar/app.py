"""The aiohttp applications: the inference API and the health/metrics port."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware

from sidecar.api import ERROR_BODIES, PROTOCOLS, admin, health, openapi, wire
from sidecar.api.keys import BODY_BUDGET, ERROR_REPLY, JOBS, METRICS, OPENAPI, SERVICE, TIMELINE
from sidecar.api.schema import Limits
from sidecar.api.wire import BodyBudget
from sidecar.auth import BearerToken, require_token
from sidecar.metrics import Metrics
from sidecar.middleware import ErrorBody, errors_and_accounting, reply_for
from sidecar.serving import Service
from sidecar.serving.jobs import Jobs
from sidecar.timeline import Timeline

BODY_BUDGET_BODIES = 8


def build_api_app(
    service: Service,
    metrics: Metrics,
    timeline: Timeline,
    auth: BearerToken | None,
    *,
    tracing: Middleware | None = None,
    jobs: Jobs | None = None,
) -> web.Application:
    """Every protocol, plus health and metrics: served on loopback TCP and the socket.

    `jobs`: the job store and runner (None: SIDECAR_JOBS_DIR is unset; job routes answer 501).

    With a token, every route but the probes asks for it (`sidecar.auth`). Tracing's middleware
    (`sidecar.otel`), when given, goes outermost: its span sees the status that was sent.
    """
    app = _base_app(
        service,
        metrics,
        timeline,
        [] if auth is None else [require_token(auth)],
        error_bodies=ERROR_BODIES,
    )
    if tracing is not None:
        app.middlewares.insert(0, tracing)
    app[JOBS] = jobs
    for protocol in PROTOCOLS:
        app.add_routes(_continue_when_read(protocol.routes()))
    app.add_routes(_continue_when_read(health.routes()))
    limits = Limits.of(service.settings)
    app[OPENAPI] = openapi.render((*PROTOCOLS, health), limits, auth=auth is not None)
    return app


def build_health_app(service: Service, metrics: Metrics, timeline: Timeline) -> web.Application:
    """Health and metrics only, for the kubelet and Prometheus; never inference."""
    app = _base_app(service, metrics, timeline, [])
    app.add_routes(_continue_when_read(health.routes()))
    return app


def build_admin_app(
    service: Service, metrics: Metrics, timeline: Timeline, guard: Middleware
) -> web.Application:
    """The admin API alone, for the admin socket (`sidecar.admin_socket`); `guard` refuses
    clients of another user before any route runs."""
    app = _base_app(service, metrics, timeline, [guard])
    app.add_routes(_continue_when_read(admin.routes()))
    return app


def _base_app(
    service: Service,
    metrics: Metrics,
    timeline: Timeline,
    guards: list[Middleware],
    *,
    error_bodies: Mapping[str, ErrorBody] | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[errors_and_accounting(metrics, error_bodies), *guards],
        client_max_size=service.settings.max_body_bytes,
    )
    app[SERVICE] = service
    app.on_response_prepare.append(wire.version_header)
    # Eight bodies of the largest size at once; bodies are small in practice, so this bounds
    # what a burst of large ones can hold without refusing ordinary load.
    app[BODY_BUDGET] = BodyBudget(BODY_BUDGET_BODIES * service.settings.max_body_bytes)
    app[METRICS] = metrics
    app[TIMELINE] = timeline
    app[ERROR_REPLY] = _error_reply
    return app


def _error_reply(exc: BaseException) -> tuple[int, str, str]:
    row, message, _ = reply_for(exc)
    return row.status, row.code, message


def _continue_when_read(routes: Iterable[web.RouteDef]) -> list[web.RouteDef]:
    # aiohttp answers `Expect: 100-continue` before any check; ours answers it when the body is
    # about to be read, after the token, the route and the declared length passed.
    return [
        web.RouteDef(r.method, r.path, r.handler, {**r.kwargs, "expect_handler": wire.expect})
        for r in routes
    ]
