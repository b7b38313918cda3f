"""The one table from errors to replies, the middleware that renders it, and request accounting.

Every error a request can meet, of any layer, has a row: its status, its code, the message shown
(the error's own text unless the row gives a fixed one), a `Retry-After` hint (errors that carry
`retry_after_s` give their own) and headers the status calls for. `reply_for` walks an exception's
MRO to find its row; anything without one is a 500 whose message says nothing of the inside. A
protocol with an error shape of its own (the Open Inference Protocol's `{"error": "..."}` under
`/v2`) renders the same row in that shape; only the body differs.

Errors met before the middleware runs (malformed HTTP, an unknown `Expect`) are rendered from the
same table by `sidecar.transport`. Every response written, the middleware's or the transport's, is
counted once by `AccessLog` (metrics and one access-log line); a request whose client went away
is counted as 499, whether it was still running or its answer could not be written.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware

import loaders
from batching import (
    BatcherClosedError,
    DeadlineExceededError,
    DeviceFailedError,
    ItemTooLargeError,
    QueueFullError,
    StepFailedError,
)
from sidecar.api.keys import ARRIVED_AT, REQUEST_ID
from sidecar.api.wire import Handler, json_response
from sidecar.errors import (
    BusyError,
    ConflictError,
    DrainingError,
    ForbiddenError,
    HeadersTooLargeError,
    InvalidInputError,
    InvalidJsonError,
    JobConflictError,
    JobNotFoundError,
    JobsDisabledError,
    JobsLockedError,
    MalformedRequestError,
    ModelNotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    RequestTimeoutError,
    StorageFullError,
    StoredFileNotFoundError,
    TooManyInputsError,
    UnauthorizedError,
    UnsupportedEncodingError,
    UnsupportedTaskError,
    UriTooLongError,
    VersionNotFoundError,
    VersionNotReadyError,
)
from sidecar.metrics import Metrics
from sidecar.models import InputError, InputTooLongError, WrongInputsError

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("sidecar.access")


# (code, message, request id) -> the JSON body of an error reply.
ErrorBody = Callable[[str, str, str], Any]


@dataclass(frozen=True)
class Reply:
    """How an error class is answered."""

    status: int
    code: str
    message: str | None = None  # shown instead of the error's own text
    retry_after_s: float | None = None
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # the connection cannot carry another request


ERRORS: dict[type[BaseException], Reply] = {
    InvalidJsonError: Reply(400, "invalid_json"),
    InputTooLongError: Reply(400, "input_too_long"),
    ItemTooLargeError: Reply(400, "input_too_long"),
    UnsupportedTaskError: Reply(400, "unsupported_task"),
    WrongInputsError: Reply(400, "unsupported_task"),
    InvalidInputError: Reply(400, "invalid_input"),
    InputError: Reply(400, "invalid_input"),
    MalformedRequestError: Reply(400, "bad_request", close=True),
    web.RequestPayloadError: Reply(400, "bad_request", "the request body is malformed", close=True),
    UnauthorizedError: Reply(401, "unauthorized", headers=(("WWW-Authenticate", "Bearer"),)),
    ForbiddenError: Reply(403, "forbidden"),
    ModelNotFoundError: Reply(404, "model_not_found"),
    VersionNotFoundError: Reply(404, "version_not_found"),
    JobNotFoundError: Reply(404, "job_not_found"),
    StoredFileNotFoundError: Reply(404, "file_not_found"),
    JobConflictError: Reply(409, "job_conflict"),
    JobsDisabledError: Reply(501, "jobs_disabled"),
    StorageFullError: Reply(507, "storage_full"),
    web.HTTPNotFound: Reply(404, "not_found", "no such route"),
    web.HTTPMethodNotAllowed: Reply(405, "method_not_allowed", "method not allowed on this route"),
    ConflictError: Reply(409, "conflict"),
    loaders.VersionsFileError: Reply(409, "invalid_versions_file"),
    RequestTimeoutError: Reply(408, "request_timeout", close=True),
    TooManyInputsError: Reply(413, "too_many_inputs"),
    PayloadTooLargeError: Reply(413, "payload_too_large", close=True),
    web.HTTPRequestEntityTooLarge: Reply(413, "payload_too_large", "request body too large"),
    UriTooLongError: Reply(414, "uri_too_long", close=True),
    UnsupportedEncodingError: Reply(
        415, "unsupported_encoding", headers=(("Accept-Encoding", "identity"),), close=True
    ),
    web.HTTPExpectationFailed: Reply(
        417, "expectation_failed", "only 'Expect: 100-continue' is supported"
    ),
    QueueFullError: Reply(429, "queue_full"),
    BusyError: Reply(429, "server_busy", retry_after_s=1, close=True),
    HeadersTooLargeError: Reply(431, "headers_too_large", close=True),
    NotReadyError: Reply(503, "not_ready", retry_after_s=5),
    DrainingError: Reply(503, "draining", retry_after_s=1),
    VersionNotReadyError: Reply(503, "version_not_ready", retry_after_s=5),
    JobsLockedError: Reply(503, "jobs_locked", retry_after_s=5),
    BatcherClosedError: Reply(503, "draining", "the server is draining", retry_after_s=1),
    DeviceFailedError: Reply(503, "device_failed", "the device failed; the container restarts"),
    DeadlineExceededError: Reply(504, "deadline_exceeded"),
    StepFailedError: Reply(500, "generation_failed", "generation failed on the device"),
    web.HTTPClientError: Reply(400, "bad_request", "bad request"),
}
INTERNAL = Reply(500, "internal_error", "internal error")
# Headers of aiohttp's own HTTP errors that belong in the reply (405 must name what is allowed).
_KEPT_HEADERS = ("Allow",)

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_REJECT_REASON = {400: "invalid", 413: "too_large"}
CLIENT_GONE = 499  # nginx's convention for a client that closed the connection
ROUTE: web.RequestKey[str] = web.RequestKey("route", str)
UNMATCHED = "unmatched"  # the route label of requests that match no route (bounded labels)
TRACE_ID: web.RequestKey[str] = web.RequestKey("trace_id", str)  # set when tracing is on


def reply_for(exc: BaseException) -> tuple[Reply, str, int | None]:
    """The row of `exc`'s class (by MRO), the message to show, and the Retry-After seconds."""
    for cls in type(exc).__mro__:
        row = ERRORS.get(cls)
        if row is not None:
            message = row.message or str(exc) or row.code.replace("_", " ")
            seconds = getattr(exc, "retry_after_s", row.retry_after_s)
            return row, message, None if seconds is None else max(1, math.ceil(seconds))
    return INTERNAL, INTERNAL.message or "", None


def request_id(request: web.BaseRequest) -> str:
    """The request's id: the client's `X-Request-Id` if it is sane, else a new one (kept)."""
    known = request.get(REQUEST_ID)
    if known is not None:
        return str(known)
    given = request.headers.get("X-Request-Id", "")
    assigned = given if _CLIENT_REQUEST_ID.match(given) else uuid.uuid4().hex
    request[REQUEST_ID] = assigned
    return assigned


def error_body(code: str, message: str, rid: str) -> dict[str, Any]:
    """The documented error shape: `{"error": {"code", "message", "request_id"}}`."""
    return {"error": {"code": code, "message": message, "request_id": rid}}


def error_response(
    exc: BaseException, rid: str, metrics: Metrics | None = None, body: ErrorBody = error_body
) -> web.Response:
    """The reply to `exc`, in the documented error shape or a protocol's own (`body`); only an
    internal error logs its stack."""
    row, message, retry_after = reply_for(exc)
    if row is INTERNAL:
        logger.error("request %s failed", rid, exc_info=exc, extra={"request_id": rid})
    else:
        # Client errors, and the 5xx that are states rather than faults (loading, draining, a
        # deadline, a dead device that /livez reports): the access line says it; a stack here
        # would flood the log with every start-up probe.
        logger.debug("request %s: %s %s", rid, row.status, message, extra={"request_id": rid})
        if metrics is not None and (reason := _REJECT_REASON.get(row.status)):
            metrics.on_reject(reason, 1)
    response = json_response(body(row.code, message, rid), status=row.status)
    for name, value in row.headers:
        response.headers[name] = value
    if isinstance(exc, web.HTTPException):
        for name in _KEPT_HEADERS:
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    if row.close:
        response.force_close()
    response.headers["X-Request-Id"] = rid
    return response


def errors_and_accounting(
    metrics: Metrics, error_bodies: Mapping[str, ErrorBody] | None = None
) -> Middleware:
    """Request id, the JSON error shape, and the 499 of a request whose client went away.

    `error_bodies` maps a path prefix to the error shape of the protocol served under it (the
    Open Inference Protocol's `/v2`); the table decides the status, message and headers of every
    error alike, and paths under no prefix get the documented shape.
    """
    bodies = dict(error_bodies or {})

    def body_for(path: str) -> ErrorBody:
        for prefix, body in bodies.items():
            if path == prefix or path.startswith(prefix + "/"):
                return body
        return error_body

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        arrived = time.monotonic()
        rid = request_id(request)
        request[ARRIVED_AT] = arrived
        resource = request.match_info.route.resource
        request[ROUTE] = resource.canonical if resource is not None else UNMATCHED
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            # Nothing is written for it, so the access log never sees it: counted here.
            account(metrics, request, CLIENT_GONE, time.monotonic() - arrived)
            raise
        except Exception as exc:
            return error_response(exc, rid, metrics, body_for(request.path))
        response.headers["X-Request-Id"] = rid
        return response

    return middleware


def access_log_class(metrics: Metrics) -> type[AbstractAccessLogger]:
    """The access logger of a runner: every response written is counted and logged once."""

    class AccessLog(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            transport = request.transport
            gone = transport is None or transport.is_closing()  # the answer was not delivered
            account(metrics, request, CLIENT_GONE if gone else response.status, time)

    return AccessLog


def account(metrics: Metrics, request: web.BaseRequest, status: int, elapsed_s: float) -> None:
    """Count one request in the metrics and write its access-log line."""
    route = request.get(ROUTE, UNMATCHED)
    metrics.observe_request(route, status, elapsed_s)
    extra = {"request_id": request_id(request)}
    if (trace_id := request.get(TRACE_ID)) is not None:
        extra["trace_id"] = trace_id
    access_logger.info(
        "%s %s %d %.2fms", request.method, route, status, elapsed_s * 1000.0, extra=extra
    )
