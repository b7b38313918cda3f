"""Process lifecycle: bind first, load in the background, serve, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar.admin_socket import bind_admin_socket, same_user_only
from sidecar.api import batches
from sidecar.api import jobs as jobs_api
from sidecar.api.job_lines import BatchLines, NativeLines
from sidecar.app import build_admin_app, build_api_app, build_health_app
from sidecar.auth import BearerToken
from sidecar.callbacks import Callbacks, load_secret
from sidecar.config import Settings
from sidecar.errors import StartupError
from sidecar.health_port import HEALTH_LIMITS, HealthPort
from sidecar.metrics import Metrics
from sidecar.middleware import INTERNAL, reply_for
from sidecar.serving import Phase, Service
from sidecar.serving.jobs import ItemError, Job, Jobs, LineFormat
from sidecar.timeline import Timeline
from sidecar.tracing import start_tracing
from sidecar.transport import (
    RESERVED_FDS,
    Limits,
    Runner,
    connection_budget,
    raise_fd_limit,
    start_tcp_site,
)

logger = logging.getLogger(__name__)


class Server:
    """The listeners, the service behind them, and its metrics.

    One runner serves the inference API on loopback TCP and the Unix socket, on the main event
    loop; the health port runs on a loop and thread of its own (`HealthPort`).

    Args:
        settings: the process's settings.
        auth: the bearer token the API listeners require, if any (its file is watched).
        timeline: start-up marks, from process start.
        sockets: listening TCP sockets already bound, by listener (`tcp`, `health`), served
            instead of binding `SIDECAR_PORT` / `SIDECAR_HEALTH_PORT`: tests bind port 0 and pass
            the socket, so that no other process can take the port in between.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        auth: BearerToken | None = None,
        timeline: Timeline | None = None,
        sockets: Mapping[str, socket.socket] | None = None,
    ) -> None:
        self.settings = settings
        self.timeline = timeline or Timeline()
        self.metrics = Metrics()
        self.tracer = start_tracing(settings.tracing)  # None unless an OTLP endpoint is set
        observer = self.metrics if self.tracer is None else self.tracer.observer(self.metrics)
        self.service = Service(settings, observer=observer)
        self.metrics.watch(self.service)
        self._auth = auth
        self._sockets = dict(sockets or {})
        self._runners: list[web.AppRunner] = []
        self._health: HealthPort | None = None
        self._watching: asyncio.Task[None] | None = None
        self._bound_socket: Path | None = None
        self._admin_socket: Path | None = None
        self.addresses: dict[str, object] = {}
        self.jobs: Jobs | None = None  # opened by `start` when SIDECAR_JOBS_DIR is set
        self.callbacks: Callbacks | None = None

    async def start(self) -> None:
        """Bind every listener; readiness stays off until `load` finishes."""
        settings = self.settings
        if settings.jobs.dir is not None:
            secret = settings.jobs.callback_secret_file
            self.callbacks = Callbacks(
                load_secret(secret) if secret else None, settings.jobs.callback_allow, _job_view
            )
            self.jobs = await Jobs.open(settings.jobs)
            self.callbacks.settled = self.jobs.settle_callback
            self.metrics.watch_jobs(self.jobs)
        api_app = build_api_app(
            self.service,
            self.metrics,
            self.timeline,
            self._auth,
            tracing=None if self.tracer is None else self.tracer.middleware(),
            jobs=self.jobs,
        )
        reserved = RESERVED_FDS + (HEALTH_LIMITS.max_connections if settings.health_port else 0)
        limits = Limits(
            keepalive_timeout_s=settings.keepalive_timeout_s,
            max_connections=connection_budget(settings.max_connections, reserved),
        )
        api = Runner(api_app, metrics=self.metrics, limits=limits, shutdown_timeout_s=5.0)
        await api.setup()
        self._runners.append(api)
        if settings.port:
            self.addresses["tcp"] = await start_tcp_site(
                api, settings.host, settings.port, self._sockets.get("tcp")
            )
        if settings.uds:
            _replace_stale_socket(Path(settings.uds))
            await web.UnixSite(api, settings.uds).start()
            self._bound_socket = Path(settings.uds)
            os.chmod(settings.uds, settings.uds_mode)
            self.addresses["uds"] = settings.uds
        if settings.health_port:
            health_app = build_health_app(self.service, self.metrics, self.timeline)
            self._health = HealthPort(
                health_app,
                self.metrics,
                host=settings.health_host,
                port=settings.health_port,
                sock=self._sockets.get("health"),
            )
            self.addresses["health"] = await self._health.start()
        if settings.versions.admin_uds:
            await self._start_admin(Path(settings.versions.admin_uds), limits)
        if self._auth is not None:
            self._watching = asyncio.create_task(self._auth.watch(), name="watch-token")
        self.timeline.mark("bind")
        logger.info("listening: %s", self.addresses)

    async def _start_admin(self, path: Path, limits: Limits) -> None:
        """The admin API on its own socket (mode 0600, the sidecar's user only)."""
        app = build_admin_app(self.service, self.metrics, self.timeline, same_user_only)
        runner = Runner(
            app,
            metrics=self.metrics,
            limits=Limits(keepalive_timeout_s=limits.keepalive_timeout_s, max_connections=16),
            shutdown_timeout_s=5.0,
        )
        await runner.setup()
        self._runners.append(runner)
        await web.SockSite(runner, bind_admin_socket(path)).start()
        self._admin_socket = path
        self.addresses["admin"] = str(path)

    async def load(self) -> None:
        """Load and warm the model; readiness turns on when it is done."""
        # What start-up imported lives as long as the process: out of the collector's sight, a
        # full collection while serving walks only what serving made (walking all of a test
        # process's modules stalled the loop for 0.3 s). Models load after it: a version
        # unloaded later stays collectable.
        await asyncio.get_running_loop().run_in_executor(None, _freeze_startup)
        loaded = await self.service.load()
        self.timeline.mark("load")
        served = await self.service.start(loaded)
        self.metrics.on_loaded(served)
        self.timeline.mark("ready")
        if self.jobs is not None:  # jobs a restart left running resume now
            lines: dict[str, LineFormat] = {
                "job": NativeLines(self.service),
                "batch": BatchLines(self.service),
            }
            ended = None if self.callbacks is None else self.callbacks.job_ended
            self.jobs.start(lines, _item_error, ended)

    async def stop(self) -> bool:
        """Drain accepted work, close the listeners, remove the socket; False on drain timeout.

        Jobs stop first: the micro-batch in flight is not committed and runs after a restart.
        """
        if self.jobs is not None:
            await self.jobs.stop()
        drained = await self.service.drain()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.jobs is not None:  # no route reads the store any more
            await self.jobs.close()
        if self.callbacks is not None:
            await self.callbacks.close()
        if self._health is not None:
            await self._health.stop()
            self._health = None
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)
            self._watching = None
        if self._bound_socket is not None:
            # Only the socket this process bound: never a file it refused to replace.
            with contextlib.suppress(FileNotFoundError):
                self._bound_socket.unlink()
            self._bound_socket = None
        if self._admin_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self._admin_socket.unlink()
            self._admin_socket = None
        if self.tracer is not None:
            await self.tracer.close()  # the last spans exported
        return drained


async def serve(
    settings: Settings, *, auth: BearerToken | None = None, timeline: Timeline | None = None
) -> int:
    """Run until SIGTERM/SIGINT; the exit code: 0 after a drain, 1 when start-up failed."""
    logger.info("settings: %s", settings.public())
    raise_fd_limit()
    server = Server(settings, auth=auth, timeline=timeline)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
    except (OSError, StartupError) as exc:
        logger.error("cannot start: %s", exc)
        await server.stop()
        return 1
    loading = asyncio.create_task(server.load(), name="load-model")
    stopping = asyncio.create_task(stop.wait(), name="wait-signal")
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    failure = loading.exception() if loading.done() else None
    if failure is not None:
        server.service.phase = Phase.FAILED
        if isinstance(failure, StartupError):
            logger.error("start-up failed: %s", failure)
        else:
            logger.error("start-up failed", exc_info=failure)
        code = 1
    elif loading.done():
        logger.info("serving; send SIGTERM to drain and stop")
        await stopping
    else:
        logger.info("stopped while loading")
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
    stopping.cancel()
    logger.info("shutting down")
    await server.stop()
    logger.info("stopped")
    return code


def _job_view(job: Job) -> tuple[str, dict[str, Any]]:
    """A callback's event kind and data: the job as its protocol's GET shows it."""
    if job.kind == "batch":
        return "batch", batches.batch_view(job)
    return "job", jobs_api.view(None, job)


def _item_error(exc: BaseException) -> ItemError:
    """A job item's error as the API's error table says it."""
    row, message, _ = reply_for(exc)
    if row is INTERNAL:
        logger.error("a job item failed", exc_info=exc)
    return ItemError(row.status, row.code, message)


def _replace_stale_socket(path: Path) -> None:
    """Remove a socket file left by a killed process; refuse to remove anything else."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"SIDECAR_UDS points at an existing file that is not a socket: {path}")
    logger.info("replacing stale socket %s", path)
    path.unlink()


def _freeze_startup() -> None:
    """Collect, then move every surviving object to the collector's permanent generation."""
    gc.collect()
    gc.freeze()
