"""What every protocol shares on the wire: guarded routes, bodies, deadlines, JSON.

Wire types stop here: handlers turn bodies into `sidecar.models` inputs and results back into
bodies; nothing below sees a request or a JSON document.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import web

from sidecar.api.keys import ARRIVED_AT, BODY_BUDGET, BODY_BYTES, LEASE, MODEL_VERSION, SERVICE
from sidecar.errors import (
    BusyError,
    InvalidInputError,
    InvalidJsonError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedEncodingError,
    UnsupportedTaskError,
)

if TYPE_CHECKING:
    from sidecar.models import Inputs
    from sidecar.serving import Inference, ServedModel, Service

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
VERSION_HEADER = "X-Model-Version"
ROUTING_KEY_HEADER = "X-Routing-Key"


def inference(handler: Handler) -> Handler:
    """Guard an inference route: admission (ready, counted for the drain).

    The bearer token is checked before, for every route of the listener (`sidecar.auth`).
    """

    async def guarded(request: web.Request) -> web.StreamResponse:
        error: BaseException | None = None
        try:
            with request.app[SERVICE].admit():
                return await handler(request)
        except BaseException as exc:
            error = exc
            raise
        finally:
            request.app[BODY_BUDGET].release(request)
            lease = request.pop(LEASE, None)
            if lease is not None:
                lease.release(error)  # the version may drain now

    guarded.__doc__ = handler.__doc__
    return guarded


def model_for(request: web.Request, name: str | None, *tasks: str) -> ServedModel:
    """The served model a request names, if it serves one of `tasks` (the route's): the
    version it is routed to (`route`).

    Raises:
        ModelNotFoundError, NotReadyError: from the service.
        VersionNotFoundError, VersionNotReadyError: a pinned version unknown or not ready.
        UnsupportedTaskError: the model serves another task.
    """
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    return check_task(route(request, name), path, *tasks)


def check_task(served: ServedModel, route: str, *tasks: str) -> ServedModel:
    """`served`, if it serves one of `tasks` (those `route` takes).

    Raises:
        UnsupportedTaskError: the model serves another task.
    """
    task = served.engine.card.task
    if task not in tasks:
        raise UnsupportedTaskError(
            f"model '{served.name}' serves '{task}', which {route} does not take"
        )
    return served


def route(request: web.Request, name: str | None) -> ServedModel:
    """Route an inference request to a version of model `name` and hold it until the request
    ends (`inference` releases it): pinned by the path's `{version}` or `X-Model-Version`
    (a version, `stable` or `canary`), else stable or canary by share, sticky per
    `X-Routing-Key`."""
    pin = request.match_info.get("version") or request.headers.get(VERSION_HEADER) or None
    lease = request.app[SERVICE].route(name, pin, request.headers.get(ROUTING_KEY_HEADER))
    request[LEASE] = lease
    served = lease.version.served
    assert served is not None  # a leased version is ready until its last lease is returned
    request[MODEL_VERSION] = served.version
    return served


async def infer(request: web.Request, served: ServedModel, inputs: Inputs) -> Inference:
    """Run `inputs` on the version the request was routed to, by the request's deadline; a
    stable request may be copied to the shadow version afterwards (never delaying this one)."""
    inference = await served.engine.infer(inputs, deadline=deadline(request))
    lease = request.get(LEASE)
    if lease is not None:
        request.app[SERVICE].shadow_copy(lease, inputs, inference.result)
    return inference


class Caller(Protocol):
    """Whom a request body is computed for: an HTTP request (`RequestCaller`) or a job's item
    (`sidecar.api.job_lines.ItemCaller`). The protocol modules' `respond` functions take one,
    so that a route and a job line compute the same body the same way."""

    service: Service
    deadline: float | None

    def model(self, name: str | None, *tasks: str) -> ServedModel:
        """The version the body goes to (held until the caller ends), if it serves `tasks`."""
        ...

    async def infer(self, served: ServedModel, inputs: Inputs) -> Inference:
        """Run `inputs` on `served`, at the caller's priority and deadline."""
        ...


class RequestCaller:
    """An HTTP request: the version its route, headers and body name (`model_for`), its
    deadline, the shadow copy (`infer`)."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.service: Service = request.app[SERVICE]
        self.deadline: float | None = deadline(request)

    def model(self, name: str | None, *tasks: str) -> ServedModel:
        return model_for(self.request, self.request.match_info.get("model", name), *tasks)

    async def infer(self, served: ServedModel, inputs: Inputs) -> Inference:
        return await infer(self.request, served, inputs)


async def version_header(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: `X-Model-Version` on every response, the version that answered
    (or the stable one, for what no version answered)."""
    version = request.get(MODEL_VERSION)
    if version is None:
        served = request.app[SERVICE].served
        version = served.version if served is not None else None
    if version is not None:
        response.headers[VERSION_HEADER] = version


def json_response(payload: Any, status: int = 200) -> web.Response:
    """Serialise with orjson, numpy arrays included."""
    return web.Response(
        body=orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
    )


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body (`read_body`) as a JSON object.

    Raises:
        InvalidJsonError, InvalidInputError: not a JSON object; and what `read_body` raises.
    """
    return parse_json(await read_body(request))


async def read_body(
    request: web.Request, max_bytes: int | None = None, *, deadline_s: float | None = None
) -> bytearray:
    """The body: uncompressed, within the body limit, in by the deadline.

    A route of bulk work (jobs) gives its own `max_bytes` and `deadline_s` (from arrival); its
    body is not charged to the shared body budget (it bounds its bodies itself).

    A declared length over the limit is refused before anything is read; a chunked body is cut
    as soon as it passes the limit, never buffered beyond it.

    Raises:
        UnsupportedEncodingError: the body has a content coding (compressed bodies are refused
            unread: no compression bomb is ever inflated).
        PayloadTooLargeError: the body is larger than SIDECAR_MAX_BODY_BYTES.
        RequestTimeoutError: the body did not arrive before the request's deadline.
    """
    charged = max_bytes is None
    max_bytes = request.app[SERVICE].settings.max_body_bytes if max_bytes is None else max_bytes
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise UnsupportedEncodingError(
            f"request bodies must not be compressed (Content-Encoding: {coding[:32]!r})"
        )
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLargeError(f"the body has {length} bytes; at most {max_bytes} are allowed")
    due = deadline(request) if deadline_s is None else request[ARRIVED_AT] + deadline_s
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
    body = bytearray()
    budget = request.app[BODY_BUDGET]
    try:
        async with asyncio.timeout(due - time.monotonic()):
            async for chunk in request.content.iter_any():
                if charged:
                    budget.charge(request, len(chunk))
                body += chunk
                if len(body) > max_bytes:
                    raise PayloadTooLargeError(
                        f"the body has more than {max_bytes} bytes; at most {max_bytes} are allowed"
                    )
    except TimeoutError:
        raise RequestTimeoutError("the request body did not arrive before the deadline") from None
    return body


class BodyBudget:
    """The request body bytes the API holds at once, all requests together.

    A request is charged for its body as it arrives (a slow one holds only what it sent) and
    released when its route's handler ends (`inference`); a chunk that would take the total past
    `max_bytes` gets the request a 429 `server_busy`, so that many large bodies at once cannot
    take the process's memory with them.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0

    def charge(self, request: web.Request, num_bytes: int) -> None:
        if self.held + num_bytes > self.max_bytes:
            raise BusyError(
                f"the server holds {self.held} bytes of request bodies (at most "
                f"{self.max_bytes}); retry shortly"
            )
        self.held += num_bytes
        request[BODY_BYTES] = request.get(BODY_BYTES, 0) + num_bytes

    def release(self, request: web.Request) -> None:
        self.held -= request.pop(BODY_BYTES, 0)


async def expect(request: web.Request) -> None:
    """`Expect` handler of every route: 100-continue is answered by `read_json`, others are 417."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed()


def parse_json(body: bytes | bytearray, what: str = "the body") -> dict[str, Any]:
    """Decode a JSON object (NaN and Infinity are not JSON and are refused); `what` names it
    in the errors."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJsonError(f"{what} is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a JSON object")
    return value


def deadline(request: web.Request) -> float:
    """Monotonic time by which the result is due: the setting, or sooner if the client asks."""
    timeout_ms = request.app[SERVICE].settings.request_timeout_ms
    header = request.headers.get("X-Request-Timeout-Ms")
    if header is not None:
        try:
            asked = int(header)
        except ValueError:
            asked = 0
        if asked < 1:
            raise InvalidInputError("X-Request-Timeout-Ms must be a positive integer")
        timeout_ms = min(timeout_ms, asked)
    return float(request[ARRIVED_AT] + timeout_ms / 1000.0)
