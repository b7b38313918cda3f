"""The aiohttp applications: the inference API and the health/metrics port."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from aiohttp import web

from sidecar import routes
from sidecar.errors import describe
from sidecar.keys import ARRIVED_AT, REQUEST_ID, RUNTIME
from sidecar.runtime import Runtime

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("sidecar.access")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_REJECT_REASON = {400: "invalid", 413: "too_large"}
_CLIENT_GONE = 499  # nginx's convention for a client that closed the connection


def build_api_app(runtime: Runtime) -> web.Application:
    """Inference, model metadata, health and metrics: served on loopback TCP and the socket."""
    app = _base_app(runtime)
    app.add_routes(
        [
            web.post("/v1/predict", routes.predict),
            web.post("/v1/models/{model}/predict", routes.predict),
            web.post("/v1/embeddings", routes.embeddings),
            web.get("/v1/models", routes.list_models),
            web.get("/v1/models/{model}", routes.get_model),
            web.get("/v1/info", routes.info),
        ]
    )
    _add_health_routes(app)
    return app


def build_health_app(runtime: Runtime) -> web.Application:
    """Health and metrics only, for the kubelet and Prometheus; never inference."""
    app = _base_app(runtime)
    _add_health_routes(app)
    return app


def _base_app(runtime: Runtime) -> web.Application:
    app = web.Application(
        middlewares=[_errors_and_accounting],
        client_max_size=runtime.settings.max_body_bytes,
    )
    app[RUNTIME] = runtime
    return app


def _add_health_routes(app: web.Application) -> None:
    app.add_routes(
        [
            web.get("/livez", routes.livez),
            web.get("/readyz", routes.readyz),
            web.get("/startupz", routes.startupz),
            web.get("/metrics", routes.metrics),
        ]
    )


@web.middleware
async def _errors_and_accounting(
    request: web.Request, handler: routes.Handler
) -> web.StreamResponse:
    """Request id, the JSON error shape, metrics and one access-log line per request."""
    arrived = time.monotonic()
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _CLIENT_REQUEST_ID.match(given) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    request[ARRIVED_AT] = arrived
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    runtime = request.app[RUNTIME]
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        _account(runtime, request, route, _CLIENT_GONE, arrived, request_id)
        raise
    except Exception as exc:
        reply = describe(exc)
        if reply.status == 500:
            logger.exception("request %s failed", request_id, extra={"request_id": request_id})
        else:
            logger.debug("request %s: %s %s", request_id, reply.status, reply.message)
            if reason := _REJECT_REASON.get(reply.status):
                runtime.metrics.on_reject(reason, 1)
        response = routes.json_response(
            {"error": {"code": reply.code, "message": reply.message, "request_id": request_id}},
            status=reply.status,
        )
        if reply.retry_after_s is not None:
            response.headers["Retry-After"] = str(reply.retry_after_s)
        if reply.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
    response.headers["X-Request-Id"] = request_id
    _account(runtime, request, route, response.status, arrived, request_id)
    return response


def _account(
    runtime: Runtime, request: web.Request, route: str, status: int, arrived: float, request_id: str
) -> None:
    elapsed = time.monotonic() - arrived
    runtime.metrics.observe_request(route, status, elapsed)
    access_logger.info(
        "%s %s %d %.2fms",
        request.method,
        route,
        status,
        elapsed * 1000.0,
        extra={"request_id": request_id},
    )
