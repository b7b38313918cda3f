"""Typed keys of the aiohttp application and request state the protocols read."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from sidecar.api.wire import BodyBudget
    from sidecar.serving import Lease, Service
    from sidecar.serving.jobs import Jobs
    from sidecar.timeline import Timeline


class Exposition(Protocol):
    """The metrics, as the `/metrics` route needs them."""

    content_type: str

    def render(self) -> bytes: ...


SERVICE: web.AppKey[Service] = web.AppKey("service")
BODY_BUDGET: web.AppKey[BodyBudget] = web.AppKey("body_budget")
METRICS: web.AppKey[Exposition] = web.AppKey("metrics")
TIMELINE: web.AppKey[Timeline] = web.AppKey("timeline")
JOBS: web.AppKey[Jobs | None] = web.AppKey("jobs")  # None: SIDECAR_JOBS_DIR is unset
OPENAPI: web.AppKey[bytes] = web.AppKey("openapi", bytes)  # the document, rendered once
ARRIVED_AT: web.RequestKey[float] = web.RequestKey("arrived_at", float)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
# An error -> (status, code, message) by the one table (sidecar.middleware): for the errors a
# stream meets after its headers went out, rendered in the stream.
ERROR_REPLY: web.AppKey[Callable[[BaseException], tuple[int, str, str]]] = web.AppKey("error_reply")
BODY_BYTES: web.RequestKey[int] = web.RequestKey("body_bytes", int)  # charged to BODY_BUDGET
LEASE: web.RequestKey[Lease] = web.RequestKey("lease")  # the version the request was routed to
MODEL_VERSION: web.RequestKey[str] = web.RequestKey("model_version", str)  # X-Model-Version
