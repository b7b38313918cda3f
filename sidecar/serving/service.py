"""What the process serves: its phase, the served model, and the requests in flight.

The composition root builds one `Service`, loads it, routes requests to it, and drains it on
SIGTERM. The versions of the model live in its `Registry` (sidecar.serving.registry): one
version for a plain snapshot, the versions of a model root otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import gc
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from batching import BatchObserver, DeviceFailedError, GenerationObserver
from sidecar.config import Settings, served_name_from
from sidecar.errors import DrainingError, ModelNotFoundError, NotReadyError
from sidecar.models import Inputs, Result
from sidecar.models.generation import GenerativeModel
from sidecar.serving import loading
from sidecar.serving.cache import ResponseCache
from sidecar.serving.canary import CanaryGuard
from sidecar.serving.engine import Engine, Executors, batch_config
from sidecar.serving.generation import GenerationEngine
from sidecar.serving.loading import Loaded, LoadReport
from sidecar.serving.policy import room, swap_policy
from sidecar.serving.registry import Registry
from sidecar.serving.shadow import Shadow
from sidecar.serving.traffic import STABLE, Traffic
from sidecar.serving.versions import Lease, Version, VersionState
from sidecar.serving.watcher import Root, RootWatcher

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
        self.registry: Registry | None = None
        self.watcher: RootWatcher | None = None  # a model root's, once serving
        self.shadow = Shadow(self._device_busy)
        self.on_swap = _ignore  # the metrics' hook: seconds from a desired change to its flip
        self._tasks: list[asyncio.Task[None]] = []
        self._name: str | None = None  # the served name, once known
        self.loaded_bytes = 0  # weight bytes streamed so far (progress while loading)
        self._observer = observer
        self._executors = Executors.create()
        self.cache = ResponseCache(settings.cache_max_items) if settings.cache_max_items else None
        self._inflight = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    async def load(self) -> Loaded:
        """Load and warm the model (its stable version) on the device thread (off the loop)."""
        loop = asyncio.get_running_loop()
        discover = functools.partial(Root.discover, self.settings.model, self._desired_file())
        found = await loop.run_in_executor(self._executors.device, discover)
        spec = None
        if found is not None:
            registry = self._new_registry(found.path)
            registry.desired_text = found.desired_text
            desired = found.desired
            if desired.stable is not None and desired.stable not in found.names:
                logger.warning(
                    "the desired stable version %s is not under the root (yet): serving the "
                    "newest, %s", desired.stable, found.names[-1],
                )  # fmt: skip
                desired = dataclasses.replace(desired, stable=None)
            registry.adopt(found.names, desired)
            spec = str(found.path / (registry.desired.stable or found.names[-1]))
        load = functools.partial(loading.load, self.settings, progress=self._progress, spec=spec)
        return await loop.run_in_executor(self._executors.device, load)

    def _desired_file(self) -> Path | None:
        file = self.settings.versions.versions_file
        return Path(file) if file else None

    def _new_registry(self, root: Path | None) -> Registry:
        versions = self.settings.versions
        ratio = versions.canary_max_error_ratio
        registry = Registry(
            root,
            swap_policy(versions.swap_policy),
            start_version=self._start_version,
            free_version=self._free_version,
            room=self._room,
            drain_timeout_s=self.settings.drain_timeout_s,
            on_swap=lambda seconds: self.on_swap(seconds),
            guard=None if ratio is None else CanaryGuard(ratio, versions.canary_window),
        )
        self.registry = registry
        return registry

    async def start(self, loaded: Loaded) -> ServedModel:
        """Serve a loaded model as the stable version: start its engine and turn ready."""
        registry = self.registry or self._new_registry(None)
        if registry.root is None:
            name = self.settings.model_version or loaded.revision or "1"
        else:
            name = registry.desired.stable or "1"
        served = await self._serve(loaded, name, loaded.warmup_timings)
        version = Version(name, weight_bytes=loaded.report.weight_bytes)
        version.served = served
        version.load_s = loaded.report.weights_s + loaded.report.build_s
        version.move(VersionState.READY)
        registry.versions[name] = version
        registry.desired = dataclasses.replace(registry.desired, stable=name)
        registry.traffic = Traffic(stable=name)
        self.phase = Phase.READY
        self.started = True
        report = loaded.report
        card = loaded.model.card
        logger.info(
            "ready: %s v%s (%s) %d bytes in %.3fs (%.2f GB/s), warm-up %.3fs",
            served.name, served.version, card.task, report.weight_bytes,
            report.weights_s, report.weights_gbps, report.warmup_s,
        )  # fmt: skip
        if not self._tasks:  # the loop runs for a single snapshot too: admin calls wait on it
            self._tasks.append(asyncio.create_task(registry.run(), name="reconcile-versions"))
        if registry.root is not None and self.watcher is None:
            self.watcher = RootWatcher(registry, registry.root, self._desired_file())
            poll_s = self.settings.versions.poll_s
            if poll_s > 0:
                watching = self.watcher.watch(poll_s)
                self._tasks.append(asyncio.create_task(watching, name="watch-root"))
            registry.wake()  # a canary or shadow the desired state names
        return served

    async def _serve(
        self, loaded: Loaded, version: str, timings: list[tuple[int, float]]
    ) -> ServedModel:
        """Start an engine for a loaded model version."""
        settings = self.settings
        card = loaded.model.card
        engine = Engine(
            loaded.model,
            batch_config(settings, card.device, card.max_input_tokens),
            observer=self._observer,
            executors=self._executors,
            cache=self.cache,
        )
        await engine.start(timings)
        generation = await self._start_generation(loaded)
        if self._name is None:
            registry = self.registry
            source = registry.root.name if registry and registry.root else loaded.source_name
            self._name = settings.model_name or served_name_from(source)
        return ServedModel(
            name=self._name,
            version=version,
            created=int(time.time()),
            engine=engine,
            report=loaded.report,
            generation=generation,
        )

    async def _start_version(self, name: str) -> ServedModel:
        """Load a version of the root beside the serving ones: weights read and the model built
        on the loading thread, warm-up passes on the device thread (between serving batches)."""
        registry = self.registry
        assert registry is not None and registry.root is not None
        loop = asyncio.get_running_loop()
        load = functools.partial(_load_version, self.settings, str(registry.root / name))
        loaded = await loop.run_in_executor(self._executors.load, load)
        registry.warming(name)
        warm = functools.partial(loading.warm_up, loaded.model, self.settings)
        started = time.perf_counter()
        timings = await loop.run_in_executor(self._executors.device, warm)
        report = dataclasses.replace(loaded.report, warmup_s=time.perf_counter() - started)
        return await self._serve(dataclasses.replace(loaded, report=report), name, timings)

    async def _free_version(self, version: Version) -> None:
        """Stop a retired version's engine and hand its memory back."""
        served = version.served
        if served is None:
            return
        version.served = None
        if served.generation is not None:
            await served.generation.stop()
        await served.engine.stop()
        device = served.engine.card.device
        # The last reference goes to the device thread: freeing a model's tensors and modules
        # takes long enough (0.7 s of CPU measured for the demo model) to stall the loop.
        last = [served]
        del served
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executors.device, _release, last, device)

    def _room(self, resident_bytes: int) -> int | None:
        """Bytes free for another version (`policy.room`)."""
        stable = self.served
        device = stable.engine.card.device if stable is not None else "cpu"
        free = loading.free_device_bytes(device)
        return room(self.settings.versions.max_bytes, resident_bytes, free)

    @property
    def served(self) -> ServedModel | None:
        """The stable version, which answers unpinned requests (None: none serves now)."""
        registry = self.registry
        version = registry.stable() if registry is not None else None
        return version.served if version is not None else None

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
            if self.served is None:
                raise NotReadyError("no version serves now: the stable version is loading")
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

    def route(self, name: str | None, pin: str | None, routing_key: str | None) -> Lease:
        """Hold the version of the model `name` that a request goes to (the caller releases).

        Raises:
            NotReadyError, ModelNotFoundError: as `model`.
            VersionNotFoundError, VersionNotReadyError: a pin naming no version, or one not ready.
        """
        self.model(name)
        assert self.registry is not None
        return self.registry.route(pin, routing_key)

    def shadow_copy(self, lease: Lease, inputs: Inputs, result: Result) -> None:
        """After a stable request's answer: run it on the shadow version too, if it falls in
        the shadow share (in the background; dropped when the device is busy)."""
        registry = self.registry
        if lease.role != STABLE or registry is None:
            return
        name = registry.traffic.shadows()
        if name is not None and name != lease.version.name:
            self.shadow.offer(registry.versions[name], inputs, result)

    def _device_busy(self) -> bool:
        """Another request is in flight (it may reach the device any moment), or some engine has
        items queued or a pass running on the device."""
        registry = self.registry
        if registry is None or self._inflight > 1:  # 1: the request that offers the copy
            return self._inflight > 1
        for version in registry.versions.values():
            served = version.served
            if served is not None:
                batcher = served.engine.batcher
                if batcher.queue_depth or batcher.running_for_s() is not None:
                    return True
        return False

    def version(self, name: str | None, version: str) -> ServedModel:
        """A ready version of model `name` (`stable`, `canary` or its name), for its card.

        Raises:
            NotReadyError, ModelNotFoundError: as `model`.
            VersionNotFoundError, VersionNotReadyError: unknown, or not ready.
        """
        self.model(name)
        assert self.registry is not None
        found, _role = self.registry.resolve(version, None)
        assert found.served is not None
        return found.served

    async def reload(self) -> None:
        """Re-read the model root now (failed versions are tried again) and reconcile.

        Raises:
            VersionsFileError: versions.json is not valid (loaders; the desired state is kept).
        """
        if self.watcher is not None:
            await self.watcher.rescan(retry=True)
        if self.registry is not None and self.registry.root is not None:
            await self.registry.reconcile_now()

    def versions(self) -> dict[str, object]:
        """The versions and their states, and the routing in force (for `/v1/models`)."""
        registry = self.registry
        if registry is None:
            return {"versions": [], "traffic": None}
        listed = [
            {"version": v.name, "state": v.state.value, "reason": v.reason}
            for v in registry.versions.values()
        ]
        return {"versions": listed, "traffic": registry.traffic.public()}

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
        await self.shadow.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.watcher is not None:
            self.watcher.close()
        if self.registry is not None:
            await self.registry.stop()
            for version in self.registry.versions.values():
                if version.served is not None:
                    if version.served.generation is not None:
                        await version.served.generation.stop()
                    await version.served.engine.stop()
        self._executors.shutdown()
        return drained


def _ignore(seconds: float) -> None:
    pass


def _load_version(settings: Settings, spec: str) -> Loaded:
    """`loading.load` of a version without its warm-up, then a full collection on this thread:
    building a model allocates enough objects to set off the collector, which would otherwise
    run on whichever thread allocates next (the event loop's, for a stall of a few tenths of a
    second). What survives it lives as long as the version: frozen out of the collector's
    sight (as start-up's objects are), so that later collections on the loop stay short."""
    loaded = loading.load(settings, spec=spec, warm=False)
    gc.collect()
    gc.freeze()
    return loaded


def _release(last: list[ServedModel], device: str) -> None:
    """Drop a retired version, collect its tensors and hand the memory back (on the device
    thread)."""
    last.clear()
    gc.unfreeze()  # a retired version's cycles, frozen at its load, become collectable
    gc.collect()
    gc.freeze()
    loading.release_memory(device)
