"""The health port on an event loop of its own, in a thread of its own.

The probes must answer while inference keeps the main event loop busy (parsing large bodies,
tokenizing small inputs inline, rendering results) or even stalls it: the kubelet restarts a
container whose `/livez` times out. The health app's handlers only read state (the service's
phase and failure, the metrics registry), so they run on this thread's loop and share nothing
with the main loop but the interpreter. Its connections have their own, smaller cap and a short
keep-alive, so that a flood of the inference listeners cannot starve it, nor it them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading

from aiohttp import web

from sidecar.metrics import Metrics
from sidecar.transport import Limits, Runner, start_tcp_site

logger = logging.getLogger(__name__)

# Probes and scrapes are a handful of short requests: a small cap, and idle ones closed soon.
HEALTH_LIMITS = Limits(keepalive_timeout_s=5.0, max_connections=32)


class HealthPort:
    """Serves `app` on host:port (or `sock`) from a dedicated thread and event loop.

    Args:
        app: the health app.
        metrics: counts its requests (thread-safe).
        host, port: where to listen, unless `sock` is given.
        sock: a listening socket already bound (tests bind port 0).
    """

    def __init__(
        self,
        app: web.Application,
        metrics: Metrics,
        *,
        host: str,
        port: int,
        sock: socket.socket | None = None,
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._where = (host, port, sock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._bound: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()

    async def start(self) -> tuple[str, int]:
        """Start the thread and listen; the bound address."""
        self._thread = threading.Thread(target=self._run, name="health-port", daemon=True)
        self._thread.start()
        return await asyncio.wrap_future(self._bound)

    async def stop(self) -> None:
        """Close the listener and its connections, end the thread."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        self._thread = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = Runner(
            self._app, metrics=self._metrics, limits=HEALTH_LIMITS, shutdown_timeout_s=1.0
        )
        try:
            host, port, sock = self._where
            loop.run_until_complete(runner.setup())
            address = loop.run_until_complete(start_tcp_site(runner, host, port, sock))
        except BaseException as exc:
            loop.run_until_complete(runner.cleanup())
            loop.close()
            self._bound.set_exception(exc)
            return
        self._bound.set_result(address)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
