"""The one table from errors to replies, and the middleware that renders it on every request.

Every error a request can meet, of any layer, has a row: its status, its code, the message shown
(the error's own text unless the row gives a fixed one) and a `Retry-After` hint (errors that
carry `retry_after_s` give their own). `reply_for` walks an exception's MRO to find its row;
anything without one is a 500 whose message says nothing of the inside.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from batching import (
    BatcherClosedError,
    DeadlineExceededError,
    DeviceFailedError,
    ItemTooLargeError,
    QueueFullError,
)
from sidecar.api.keys import ARRIVED_AT, REQUEST_ID
from sidecar.api.wire import Handler, json_response
from sidecar.errors import (
    DrainingError,
    InvalidInputError,
    InvalidJsonError,
    ModelNotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    TooManyInputsError,
    UnauthorizedError,
    UnsupportedTaskError,
)
from sidecar.metrics import Metrics
from sidecar.models import InputError, InputTooLongError, WrongInputsError

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("sidecar.access")


@dataclass(frozen=True)
class Reply:
    """How an error class is answered."""

    status: int
    code: str
    message: str | None = None  # shown instead of the error's own text
    retry_after_s: float | None = None


ERRORS: dict[type[BaseException], Reply] = {
    InvalidJsonError: Reply(400, "invalid_json"),
    InputTooLongError: Reply(400, "input_too_long"),
    ItemTooLargeError: Reply(400, "input_too_long"),
    UnsupportedTaskError: Reply(400, "unsupported_task"),
    WrongInputsError: Reply(400, "unsupported_task"),
    InvalidInputError: Reply(400, "invalid_input"),
    InputError: Reply(400, "invalid_input"),
    UnauthorizedError: Reply(401, "unauthorized"),
    ModelNotFoundError: Reply(404, "model_not_found"),
    web.HTTPNotFound: Reply(404, "not_found", "no such route"),
    web.HTTPMethodNotAllowed: Reply(405, "method_not_allowed", "method not allowed on this route"),
    TooManyInputsError: Reply(413, "too_many_inputs"),
    PayloadTooLargeError: Reply(413, "payload_too_large"),
    web.HTTPRequestEntityTooLarge: Reply(413, "payload_too_large", "request body too large"),
    QueueFullError: Reply(429, "queue_full"),
    NotReadyError: Reply(503, "not_ready", retry_after_s=5),
    DrainingError: Reply(503, "draining", retry_after_s=1),
    BatcherClosedError: Reply(503, "draining", "the server is draining", retry_after_s=1),
    DeviceFailedError: Reply(503, "device_failed", "the device failed; the container restarts"),
    DeadlineExceededError: Reply(504, "deadline_exceeded"),
    web.HTTPClientError: Reply(400, "bad_request", "bad request"),
}
INTERNAL = Reply(500, "internal_error", "internal error")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_REJECT_REASON = {400: "invalid", 413: "too_large"}
_CLIENT_GONE = 499  # nginx's convention for a client that closed the connection


def reply_for(exc: BaseException) -> tuple[Reply, str, int | None]:
    """The row of `exc`'s class (by MRO), the message to show, and the Retry-After seconds."""
    for cls in type(exc).__mro__:
        row = ERRORS.get(cls)
        if row is not None:
            message = row.message or str(exc) or row.code.replace("_", " ")
            seconds = getattr(exc, "retry_after_s", row.retry_after_s)
            return row, message, None if seconds is None else max(1, math.ceil(seconds))
    return INTERNAL, INTERNAL.message or "", None


def errors_and_accounting(metrics: Metrics) -> Middleware:
    """Request id, the JSON error shape, metrics and one access-log line per request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        arrived = time.monotonic()
        given = request.headers.get("X-Request-Id", "")
        request_id = given if _CLIENT_REQUEST_ID.match(given) else uuid.uuid4().hex
        request[REQUEST_ID] = request_id
        request[ARRIVED_AT] = arrived
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            _account(metrics, request, route, _CLIENT_GONE, arrived, request_id)
            raise
        except Exception as exc:
            row, message, retry_after = reply_for(exc)
            if row.status >= 500:
                logger.exception("request %s failed", request_id, extra={"request_id": request_id})
            else:
                logger.debug("request %s: %s %s", request_id, row.status, message)
                if reason := _REJECT_REASON.get(row.status):
                    metrics.on_reject(reason, 1)
            response = json_response(
                {"error": {"code": row.code, "message": message, "request_id": request_id}},
                status=row.status,
            )
            if retry_after is not None:
                response.headers["Retry-After"] = str(retry_after)
            if row.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
        response.headers["X-Request-Id"] = request_id
        _account(metrics, request, route, response.status, arrived, request_id)
        return response

    return middleware


def _account(
    metrics: Metrics, request: web.Request, route: str, status: int, arrived: float, request_id: str
) -> None:
    elapsed = time.monotonic() - arrived
    metrics.observe_request(route, status, elapsed)
    access_logger.info(
        "%s %s %d %.2fms",
        request.method,
        route,
        status,
        elapsed * 1000.0,
        extra={"request_id": request_id},
    )
