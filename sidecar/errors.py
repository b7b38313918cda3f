"""The sidecar's own errors. Each maps to an HTTP status in `sidecar.middleware.ERRORS`.

    SidecarError
     ├── ConfigError                 a bad environment variable (exit code 2, never HTTP)
     ├── StartupError                the model could not be loaded (exit code 1, never HTTP)
     └── ApiError                    answered to the client; the message must be safe to show
          ├── InvalidInputError          400 invalid_input
          │    ├── InvalidJsonError      400 invalid_json
          │    └── UnsupportedTaskError  400 unsupported_task
          ├── MalformedRequestError      400 bad_request (HTTP framing: request line, headers, body)
          │    ├── UriTooLongError       414 uri_too_long
          │    └── HeadersTooLargeError  431 headers_too_large
          ├── UnauthorizedError          401 unauthorized
          ├── ForbiddenError             403 forbidden (the admin socket: another user)
          ├── ModelNotFoundError         404 model_not_found
          │    └── VersionNotFoundError  404 version_not_found
          ├── ConflictError              409 conflict (an admin change the state forbids)
          ├── JobNotFoundError           404 job_not_found
          ├── StoredFileNotFoundError    404 file_not_found
          ├── JobConflictError           409 job_conflict (the job's status does not allow it)
          ├── RequestTimeoutError        408 request_timeout (the body did not arrive in time)
          ├── PayloadTooLargeError       413 payload_too_large
          │    └── TooManyInputsError    413 too_many_inputs
          ├── UnsupportedEncodingError   415 unsupported_encoding (a compressed request body)
          ├── BusyError                  429 server_busy (too many request body bytes held at once)
          ├── JobsDisabledError          501 jobs_disabled (SIDECAR_JOBS_DIR is unset)
          ├── StorageFullError           507 storage_full (SIDECAR_JOBS_MAX_BYTES or the disk)
          └── UnavailableError           503
               ├── NotReadyError         503 not_ready (loading)
               ├── DrainingError         503 draining
               ├── VersionNotReadyError  503 version_not_ready
               └── JobsLockedError       503 jobs_locked (another sidecar holds SIDECAR_JOBS_DIR)

The layers below raise their own HTTP-agnostic errors (`batching`, `sidecar.models`, `loaders`);
the same table maps those.
"""

from __future__ import annotations


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
    """The request is not a valid request."""


class InvalidJsonError(InvalidInputError):
    """The request body is not JSON."""


class UnsupportedTaskError(InvalidInputError):
    """The route needs a task the served model does not perform."""


class MalformedRequestError(ApiError):
    """The request is not well-formed HTTP (request line, headers, framing or body encoding)."""


class UriTooLongError(MalformedRequestError):
    """The request line is longer than allowed."""


class HeadersTooLargeError(MalformedRequestError):
    """A header field is longer than allowed, or there are too many of them."""


class RequestTimeoutError(ApiError):
    """The request body did not arrive before the request's deadline."""


class UnsupportedEncodingError(ApiError):
    """The request body has a content coding the server does not take (it takes identity)."""


class BusyError(ApiError):
    """The request bodies held at once would pass their budget; the client may retry shortly."""


class UnauthorizedError(ApiError):
    """The bearer token is missing or wrong."""


class ModelNotFoundError(ApiError):
    """The URL or body names a model that is not served here."""


class PayloadTooLargeError(ApiError):
    """The request body is larger than allowed."""


class TooManyInputsError(PayloadTooLargeError):
    """The request has more inputs than allowed."""


class UnavailableError(ApiError):
    """The model does not take requests now; the client may retry later."""


class NotReadyError(UnavailableError):
    """The model is still loading."""


class DrainingError(UnavailableError):
    """The server is draining before it stops: it takes no new requests."""


class ForbiddenError(ApiError):
    """The client may not use this listener (the admin socket refuses other users)."""


class VersionNotFoundError(ModelNotFoundError):
    """A request pins a version the model does not have."""


class ConflictError(ApiError):
    """An admin change the versions' state does not allow now."""


class VersionNotReadyError(UnavailableError):
    """A request pins a version that is not ready (loading, draining, failed, unloaded)."""

    def __init__(self, message: str, *, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JobNotFoundError(ApiError):
    """No job (or batch) of that id is stored here."""


class StoredFileNotFoundError(ApiError):
    """No file of that id is stored here."""


class JobConflictError(ApiError):
    """The job's status does not allow what was asked (cancel a finished job, delete a running
    one)."""


class JobsDisabledError(ApiError):
    """Jobs need SIDECAR_JOBS_DIR, which is unset."""


class JobsLockedError(UnavailableError):
    """Another process holds the jobs directory's lock (a second sidecar on a shared volume, or
    the old pod of a rollout still draining): jobs run here once it lets go."""


class StorageFullError(ApiError):
    """The jobs directory's disk budget (or the disk) has no room for a new job or file."""
