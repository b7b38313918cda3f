"""Errors of the sidecar and the one table that maps every error to an HTTP status.

    SidecarError
     ├── ConfigError                 a bad environment variable (exit code 2, never HTTP)
     ├── StartupError                the model could not be loaded (exit code 1, never HTTP)
     └── ApiError                    rendered as the documented JSON error
          ├── InvalidInputError          400 invalid_input
          │    ├── InvalidJsonError      400 invalid_json
          │    ├── InputTooLongError     400 input_too_long
          │    └── UnsupportedTaskError  400 unsupported_task
          ├── UnauthorizedError          401 unauthorized
          ├── ModelNotFoundError         404 model_not_found
          ├── PayloadTooLargeError       413 payload_too_large
          │    └── TooManyInputsError    413 too_many_inputs
          └── UnavailableError           503 not_ready (loading or draining)

Errors of lower layers (batching, aiohttp) are mapped in `STATUS_BY_ERROR` too; `describe` walks
an exception's MRO to find its row. Anything unknown is a 500 whose message says nothing inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiohttp import web

from batching import (
    BatcherClosedError,
    DeadlineExceededError,
    ItemTooLargeError,
    QueueFullError,
)


class SidecarError(Exception):
    """Base class of the sidecar's own errors."""


class ConfigError(SidecarError):
    """An environment variable has a value the sidecar cannot use."""

    def __init__(self, variable: str, value: str, accepted: str) -> None:
        super().__init__(f"{variable}={value!r} is invalid: expected {accepted}")
        self.variable = variable


class StartupError(SidecarError):
    """The model could not be resolved, loaded, built or warmed."""


class ApiError(SidecarError):
    """An error answered to the client; its message must be safe to show."""


class InvalidInputError(ApiError):
    """The request body is not a valid request."""


class InvalidJsonError(InvalidInputError):
    """The request body is not JSON."""


class InputTooLongError(InvalidInputError):
    """An input has more tokens than allowed and truncation was not asked for."""


class UnsupportedTaskError(InvalidInputError):
    """The route needs a task the served model does not perform."""


class UnauthorizedError(ApiError):
    """The bearer token is missing or wrong."""


class ModelNotFoundError(ApiError):
    """The URL or body names a model that is not served here."""


class PayloadTooLargeError(ApiError):
    """The request body is larger than allowed."""


class TooManyInputsError(PayloadTooLargeError):
    """The request has more inputs than allowed."""


class UnavailableError(ApiError):
    """The model is not ready: loading or draining."""

    def __init__(self, message: str, *, reason: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Status:
    """How an error class is answered."""

    status: int
    code: str


STATUS_BY_ERROR: dict[type[BaseException], Status] = {
    InvalidJsonError: Status(400, "invalid_json"),
    InputTooLongError: Status(400, "input_too_long"),
    UnsupportedTaskError: Status(400, "unsupported_task"),
    InvalidInputError: Status(400, "invalid_input"),
    ItemTooLargeError: Status(400, "input_too_long"),
    UnauthorizedError: Status(401, "unauthorized"),
    ModelNotFoundError: Status(404, "model_not_found"),
    web.HTTPNotFound: Status(404, "not_found"),
    web.HTTPMethodNotAllowed: Status(405, "method_not_allowed"),
    TooManyInputsError: Status(413, "too_many_inputs"),
    PayloadTooLargeError: Status(413, "payload_too_large"),
    web.HTTPRequestEntityTooLarge: Status(413, "payload_too_large"),
    QueueFullError: Status(429, "queue_full"),
    UnavailableError: Status(503, "not_ready"),
    BatcherClosedError: Status(503, "draining"),
    DeadlineExceededError: Status(504, "deadline_exceeded"),
    web.HTTPClientError: Status(400, "bad_request"),
}
INTERNAL = Status(500, "internal_error")

_SAFE_MESSAGES: dict[type[BaseException], str] = {
    web.HTTPNotFound: "no such route",
    web.HTTPMethodNotAllowed: "method not allowed on this route",
    web.HTTPRequestEntityTooLarge: "request body too large",
    web.HTTPClientError: "bad request",
    BatcherClosedError: "the server is draining",
}


@dataclass(frozen=True)
class ErrorReply:
    """What the client is told about an error."""

    status: int
    code: str
    message: str
    retry_after_s: int | None


def describe(exc: BaseException) -> ErrorReply:
    """Map an exception to its reply by walking its MRO through `STATUS_BY_ERROR`."""
    for cls in type(exc).__mro__:
        row = STATUS_BY_ERROR.get(cls)
        if row is not None:
            message = _SAFE_MESSAGES.get(cls) or str(exc) or row.code.replace("_", " ")
            return ErrorReply(row.status, row.code, message, _retry_after(exc))
    return ErrorReply(INTERNAL.status, INTERNAL.code, "internal error", None)


def _retry_after(exc: BaseException) -> int | None:
    seconds = getattr(exc, "retry_after_s", None)
    if isinstance(exc, BatcherClosedError):
        seconds = 1.0
    return None if seconds is None else max(1, math.ceil(seconds))
