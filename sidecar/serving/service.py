"""What the process serves: its phase, the served model, and the requests in flight.

The composition root builds one `Service`, loads it, routes requests to it, and drains it on
SIGTERM. It is where the version registry will live: today it holds one model version.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from batching import BatchObserver, DeviceFailedError, GenerationObserver
from sidecar.config import Settings, served_name_from
from sidecar.errors import DrainingError, ModelNotFoundError, NotReadyError
from sidecar.models.generation import GenerativeModel
from sidecar.serving import loading
from sidecar.serving.cache import ResponseCache
from sidecar.serving.engine import Engine, Executors, batch_config
from sidecar.serving.generation import GenerationEngine
from sidecar.serving.loading import Loaded, LoadReport

logger = logging.getLogger(__name__)

# The name that always selects the served model, whatever it is called.
DEFAULT_ALIAS = "default"


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass(frozen=True)
class ServedModel:
    """A model version that serves requests, under its served name."""

    name: str
    version: str
    created: int
    engine: Engine
    report: LoadReport
    # Task `generate`: the decoder's generation engine (its `engine` refuses other tasks).
    generation: GenerationEngine | None = None


class Service:
    """Loads the model, routes requests to it, counts them, and drains them.

    The threads every engine runs on (`Executors`: the device, collation, preparation) and the
    response cache they share (None when SIDECAR_CACHE_MAX_ITEMS is 0) are created here, once.

    Args:
        settings: the process's settings.
        observer: receives batch figures (the metrics).
    """

    def __init__(self, settings: Settings, *, observer: BatchObserver) -> None:
        self.settings = settings
        self.phase = Phase.LOADING
        self.started = False  # start-up finished; stays true while draining
        self.served: ServedModel | None = None
        self.loaded_bytes = 0  # weight bytes streamed so far (progress while loading)
        self._observer = observer
        self._executors = Executors.create()
        self.cache = ResponseCache(settings.cache_max_items) if settings.cache_max_items else None
        self._inflight = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    async def load(self) -> Loaded:
        """Load and warm the model on the device thread (off the loop)."""
        loop = asyncio.get_running_loop()
        load = functools.partial(loading.load, self.settings, progress=self._progress)
        return await loop.run_in_executor(self._executors.device, load)

    async def start(self, loaded: Loaded) -> ServedModel:
        """Serve a loaded model: start its engine and turn ready."""
        settings = self.settings
        card = loaded.model.card
        engine = Engine(
            loaded.model,
            batch_config(settings, card.device, card.max_input_tokens),
            observer=self._observer,
            executors=self._executors,
            cache=self.cache,
        )
        await engine.start(loaded.warmup_timings)
        generation = await self._start_generation(loaded)
        served = ServedModel(
            name=settings.model_name or served_name_from(loaded.source_name),
            version=settings.model_version or loaded.revision or "1",
            created=int(time.time()),
            engine=engine,
            report=loaded.report,
            generation=generation,
        )
        self.served = served
        self.phase = Phase.READY
        self.started = True
        report = loaded.report
        logger.info(
            "ready: %s v%s (%s) %d bytes in %.3fs (%.2f GB/s), warm-up %.3fs",
            served.name, served.version, card.task, report.weight_bytes,
            report.weights_s, report.weights_gbps, report.warmup_s,
        )  # fmt: skip
        return served

    async def _start_generation(self, loaded: Loaded) -> GenerationEngine | None:
        """A decoder's generation engine, started; None for other models."""
        if not isinstance(loaded.model, GenerativeModel) or loaded.model.card.task != "generate":
            return None
        observer = self._observer
        generation = GenerationEngine(
            loaded.model,
            self.settings.generation,
            queue_max=self.settings.queue_max,
            device=self._executors.device,
            prepare=self._executors.prepare,
            observer=observer if isinstance(observer, GenerationObserver) else GenerationObserver(),
        )
        await generation.start()
        return generation

    def _progress(self, done: int, total: int) -> None:
        self.loaded_bytes = done

    @property
    def torch_version(self) -> str:
        return loading.TORCH_VERSION

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def failure(self) -> str | None:
        """Why the process can serve no more (only a restart helps), or None."""
        if self.served is None:
            return None
        if self.served.generation is not None:
            return self.served.generation.failure(self.settings.forward_timeout_s)
        return self.served.engine.failure(self.settings.forward_timeout_s)

    def check_ready(self) -> None:
        """Raise the 503 that says why requests are not taken now, if they are not."""
        if self.phase is Phase.READY:
            if self.failure() is not None:
                raise DeviceFailedError("the device failed; the process must restart")
            return
        if self.phase is Phase.DRAINING:
            raise DrainingError("the server is draining")
        raise NotReadyError("the model is loading")

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Count a request in flight for as long as it runs; refuse it when not ready."""
        self.check_ready()
        self._inflight += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._quiet.set()

    def model(self, name: str | None) -> ServedModel:
        """The served model a request names (None or `default`: the served one).

        Raises:
            NotReadyError: nothing is loaded yet.
            ModelNotFoundError: the name is not served here.
        """
        served = self.served
        if served is None:
            raise NotReadyError("the model is loading")
        if name is not None and name not in (DEFAULT_ALIAS, served.name):
            raise ModelNotFoundError(
                f"model '{name[:128]}' is not served here; this server serves '{served.name}'"
            )
        return served

    async def drain(self) -> bool:
        """Refuse new requests, let admitted ones finish; False if the drain timeout ran out."""
        self.phase = Phase.DRAINING
        logger.info("draining: %d requests in flight", self._inflight)
        timeout_s = self.settings.drain_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await self._quiet.wait()
            drained = True
        except TimeoutError:
            logger.warning(
                "drain timeout (%ss) with %d requests in flight", timeout_s, self._inflight
            )
            drained = False
        if self.served is not None:
            if self.served.generation is not None:
                await self.served.generation.stop()
            await self.served.engine.stop()
        self._executors.shutdown()
        return drained
