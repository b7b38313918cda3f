"""The aiohttp applications: the inference API and the health/metrics port."""

from __future__ import annotations

from aiohttp import web

from sidecar.api import PROTOCOLS, health
from sidecar.api.keys import AUTH_TOKEN, METRICS, SERVICE, TIMELINE
from sidecar.metrics import Metrics
from sidecar.middleware import errors_and_accounting
from sidecar.serving import Service
from sidecar.timeline import Timeline


def build_api_app(
    service: Service, metrics: Metrics, timeline: Timeline, auth_token: str | None
) -> web.Application:
    """Every protocol, plus health and metrics: served on loopback TCP and the socket."""
    app = _base_app(service, metrics, timeline, auth_token)
    for protocol in PROTOCOLS:
        app.add_routes(protocol.routes())
    app.add_routes(health.routes())
    return app


def build_health_app(service: Service, metrics: Metrics, timeline: Timeline) -> web.Application:
    """Health and metrics only, for the kubelet and Prometheus; never inference."""
    app = _base_app(service, metrics, timeline, None)
    app.add_routes(health.routes())
    return app


def _base_app(
    service: Service, metrics: Metrics, timeline: Timeline, auth_token: str | None
) -> web.Application:
    app = web.Application(
        middlewares=[errors_and_accounting(metrics)],
        client_max_size=service.settings.max_body_bytes,
    )
    app[SERVICE] = service
    app[METRICS] = metrics
    app[TIMELINE] = timeline
    app[AUTH_TOKEN] = auth_token
    return app
