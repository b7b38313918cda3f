"""Health and metrics: served on the API listeners and on the health port.

`/livez`: the process and its device worker are alive (fails after a fatal device error, and while
a forward pass runs past SIDECAR_FORWARD_TIMEOUT_S).
`/readyz`: the model is loaded, warmed and not draining. `/startupz`: start-up finished (stays
true while draining). `/metrics`: Prometheus exposition.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sidecar.api.keys import METRICS, SERVICE
from sidecar.api.openapi import ERROR_REF, STRING, json_content, operation, record
from sidecar.api.schema import Limits
from sidecar.api.wire import json_response
from sidecar.errors import NotReadyError


def routes() -> list[web.RouteDef]:
    return [
        web.get("/livez", livez),
        web.get("/readyz", readyz),
        web.get("/startupz", startupz),
        web.get("/metrics", metrics),
    ]


def openapi_paths(limits: Limits) -> dict[str, dict[str, Any]]:
    def probe(summary: str, status: str) -> dict[str, Any]:
        return operation(
            summary,
            limits=limits,
            ok=json_content(record(status={"const": status})),
            errors=[503],
            tag="health",
            guarded=False,
        )

    livez = probe("Process and device worker alive (never asks for a token)", "alive")
    failed = record(status={"const": "failed"}, reason=STRING)
    livez["responses"]["503"]["content"] = json_content({"anyOf": [failed, ERROR_REF]})
    livez["responses"]["503"]["description"] = "failed: a fatal device error or a hung pass"
    return {
        "/livez": {"get": livez},
        "/readyz": {"get": probe("Model loaded, warmed and not draining", "ready")},
        "/startupz": {"get": probe("Start-up finished", "started")},
        "/metrics": {
            "get": operation(
                "Prometheus exposition",
                limits=limits,
                ok={"text/plain": {"schema": STRING}},
                tag="health",
            )
        },
    }


async def livez(request: web.Request) -> web.StreamResponse:
    """Process and device worker alive; fails after a fatal device error or on a hung pass."""
    failure = request.app[SERVICE].failure()
    if failure is not None:
        return json_response({"status": "failed", "reason": failure}, status=503)
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Model loaded, warmed and not draining."""
    request.app[SERVICE].check_ready()
    return json_response({"status": "ready"})


async def startupz(request: web.Request) -> web.StreamResponse:
    """Start-up finished (stays true while draining)."""
    if not request.app[SERVICE].started:
        raise NotReadyError("the model is loading")
    return json_response({"status": "started"})


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus exposition."""
    exposition = request.app[METRICS]
    return web.Response(body=exposition.render(), headers={"Content-Type": exposition.content_type})
