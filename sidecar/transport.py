"""HTTP transport limits of every listener, and the error shape for what the app never sees.

aiohttp parses requests before any route or middleware runs. `Runner` serves an app with:

- parser limits: a request line of `MAX_LINE_BYTES` (414 beyond), header fields of
  `MAX_FIELD_BYTES` and at most `MAX_HEADERS` of them (431 beyond);
- `keepalive_timeout_s`: a connection that has not sent a complete request (header) within it,
  from its start or from the last response, is closed: idle keep-alive connections and clients
  trickling headers alike. The body is read by the request's deadline (`sidecar.api.wire`);
- request bodies are never decompressed here (`auto_decompress=False`): a compressed body is
  refused with 415 before it is read, so no compression bomb is inflated;
- at most `max_connections` connections at once: beyond, a connection gets a 503 and is closed, so
  that silent sockets cannot use up the process's file descriptors (`connection_budget`);
- malformed HTTP and errors raised before the middleware (an unknown `Expect`) answered in the
  documented error shape with an `X-Request-Id`, logged at debug, counted and access-logged.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from sidecar.errors import HeadersTooLargeError, MalformedRequestError, UriTooLongError
from sidecar.metrics import Metrics
from sidecar.middleware import access_log_class, access_logger, error_response, request_id

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 4096  # the request line: our routes and model names are short
MAX_FIELD_BYTES = 8190  # one header field, name and value (aiohttp's default)
MAX_HEADERS = 64
# After an early answer (401, 413, 415) the unread rest of a body is read and dropped for at most
# this long, so that the client sees the answer instead of a reset; then the connection closes.
LINGER_S = 2.0
# File descriptors kept out of the connection budget: the process's own (libraries, model files,
# logs) and the health port's connections.
RESERVED_FDS = 64
_REFUSAL_LOG_EVERY_S = 10.0

RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Limits:
    """The limits of one listener group."""

    keepalive_timeout_s: float
    max_connections: int


class Runner(web.AppRunner):
    """An `AppRunner` with the transport limits, and the error shape for protocol errors.

    Args:
        app: the application.
        metrics: counts every response (through the access log).
        limits: keep-alive timeout and connection cap.
        shutdown_timeout_s: how long `cleanup` waits for handlers still running.
    """

    def __init__(
        self, app: web.Application, *, metrics: Metrics, limits: Limits, shutdown_timeout_s: float
    ) -> None:
        self._limits = limits
        self._access_log_class = access_log_class(metrics)
        self._handler_args: dict[str, Any] = {
            "keepalive_timeout": limits.keepalive_timeout_s,
            "max_line_size": MAX_LINE_BYTES,
            "max_field_size": MAX_FIELD_BYTES,
            "max_headers": MAX_HEADERS,
            "lingering_time": LINGER_S,
            "auto_decompress": False,
            "access_log": access_logger,
        }
        # handler_cancellation: a client that disconnects cancels its handler, so its queued
        # items are dropped before they reach the model.
        super().__init__(
            app,
            handler_cancellation=True,
            access_log_class=self._access_log_class,
            shutdown_timeout=shutdown_timeout_s,
            **self._handler_args,
        )

    async def _make_server(self) -> web.Server:
        # The app's own server, rebuilt as ours: same handler and request factory, our
        # connections (protocol errors in the error shape) and the connection cap.
        made = await super()._make_server()
        return _Server(
            _front(made.request_handler),
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            max_connections=self._limits.max_connections,
            access_log_class=self._access_log_class,
            **self._handler_args,
        )


class _Server(web.Server):
    """Makes `_Connection`s, and refuses connections beyond the cap."""

    def __init__(
        self,
        handler: RequestHandler,
        *,
        request_factory: Any,
        handler_cancellation: bool,
        max_connections: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=handler_cancellation,
            **kwargs,
        )
        self._handler_kwargs = kwargs  # what each connection (RequestHandler) is made with
        self._max_connections = max_connections
        self._refused = 0
        self._refusal_logged_at = -_REFUSAL_LOG_EVERY_S

    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=asyncio.get_running_loop(), **self._handler_kwargs)

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        if len(self.connections) < self._max_connections:
            super().connection_made(handler, transport)
            return
        # Over the cap: answer at once and close, so the descriptor is freed right away.
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= _REFUSAL_LOG_EVERY_S:
            logger.warning(
                "connection limit (%d) reached: refused %d connection(s) so far",
                self._max_connections,
                self._refused,
            )
            self._refusal_logged_at = now
        transport.write(_overloaded(uuid.uuid4().hex))
        transport.close()


def _overloaded(rid: str) -> bytes:
    """A whole 503 response, written before the connection is closed."""
    body = orjson.dumps(
        {
            "error": {
                "code": "too_many_connections",
                "message": "the server has too many open connections",
                "request_id": rid,
            }
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Retry-After: 1\r\nX-Request-Id: {rid}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Connection(web.RequestHandler):
    """aiohttp's connection protocol, answering what it cannot parse in the error shape."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As aiohttp does: part of a response went out, no error can follow it.
            raise ConnectionError("the response has started; no error reply can follow")
        error = _protocol_error(exc, status, message)
        return error_response(error, request_id(request))


def _protocol_error(exc: BaseException | None, status: int, message: str | None) -> BaseException:
    """Our error for what aiohttp's parser (or its connection) refused."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == MAX_LINE_BYTES:
            return UriTooLongError(f"the request line is longer than {MAX_LINE_BYTES} bytes")
        return HeadersTooLargeError(f"a header field is longer than {MAX_FIELD_BYTES} bytes")
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return HeadersTooLargeError(f"a request may have at most {MAX_HEADERS} header fields")
    if status < 500:
        first_line = (message or "").strip().splitlines()[:1]
        detail = f": {first_line[0][:120]}" if first_line else ""
        return MalformedRequestError(f"malformed HTTP request{detail}")
    return exc if exc is not None else RuntimeError(f"HTTP {status} from the connection")


def _front(handler: RequestHandler) -> RequestHandler:
    """Render, in the error shape, errors raised before the middleware runs."""

    async def front(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as exc:  # the expect handler's 417, anything outside the middleware
            return error_response(exc, request_id(request))

    return front


async def start_tcp_site(
    runner: web.AppRunner, host: str, port: int, sock: socket.socket | None
) -> tuple[str, int]:
    """Listen on `sock` if given (tests hand over a socket bound to port 0), else host:port."""
    site: web.BaseSite = (
        web.SockSite(runner, sock)
        if sock is not None
        else web.TCPSite(runner, host, port, reuse_address=True)
    )
    await site.start()
    server = site._server
    assert server is not None and isinstance(server, asyncio.Server)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    return str(bound_host), int(bound_port)


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard limit (as Go does at start); the new one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.info("cannot raise the open-file limit from %d: %s", soft, exc)
    return soft


def connection_budget(wanted: int, reserved: int) -> int:
    """`wanted` connections, fewer when the open-file limit leaves less than `reserved` over."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    budget = max(1, soft - reserved)
    if budget < wanted:
        logger.warning(
            "SIDECAR_MAX_CONNECTIONS=%d exceeds what the open-file limit (%d) allows: "
            "%d connections at most",
            wanted,
            soft,
            budget,
        )
    return min(wanted, budget)
