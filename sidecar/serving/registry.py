"""The version registry: the desired state, the actual state, and the one loop reconciling them.

Desired: which version is stable, the canary and shadow shares, how many versions stay resident
(versions.json, the admin API, or the newest version). Actual: each version's state
(`sidecar.serving.versions`) and the routing in force (`Traffic`). One task runs every change:
load the new version beside the old (weights read on a loading thread; only warm-up passes go
to the device thread, between serving batches), flip the routing in one assignment, then drain
and free what is no longer wanted. A version that fails is `failed` with its reason and routing
keeps the version that serves. The swap policy decides what to do without room for both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import loaders
from loaders import DesiredState
from sidecar.errors import (
    ConflictError,
    InvalidInputError,
    NotReadyError,
    StartupError,
    VersionNotFoundError,
    VersionNotReadyError,
)
from sidecar.serving.canary import CanaryGuard
from sidecar.serving.policy import SwapPolicy
from sidecar.serving.traffic import CANARY, PINNED, STABLE, Traffic
from sidecar.serving.versions import Lease, Version, VersionState

logger = logging.getLogger(__name__)

# A version loaded and started (blocking load on the loading thread, warm-up, engine start).
Starter = Callable[[str], Awaitable[Any]]
Freer = Callable[[Version], Awaitable[None]]


class Registry:
    """Every version of the served model, and the reconcile loop.

    Args:
        root: the model root, or None when one snapshot is served (one version, no loop work).
        policy: the swap policy.
        start_version: loads, warms and starts a version by name; returns its `ServedModel`.
        free_version: stops a version's engine and hands its memory back.
        room: the bytes free for another version (None: unbounded).
        drain_timeout_s: how long a retired version's requests may take to finish.
        on_swap: told the seconds from a desired stable version to its flip (the metrics).
        guard: rolls the canary back when its failures pass a limit (None: never).
    """

    def __init__(
        self,
        root: Path | None,
        policy: SwapPolicy,
        *,
        start_version: Starter,
        free_version: Freer,
        room: Callable[[int], int | None],
        drain_timeout_s: float,
        on_swap: Callable[[float], None] = lambda seconds: None,
        guard: CanaryGuard | None = None,
    ) -> None:
        self.root = root
        self.policy = policy
        self.versions: dict[str, Version] = {}
        self.traffic = Traffic()
        self.desired = DesiredState()
        self.desired_text: bytes | None = None  # versions.json as last read
        self.history: list[str] = []  # previous stables, most recent last
        self._pinned: set[str] = set()  # loaded over the admin API: kept until unloaded
        self._retry: set[str] = set()  # failed versions asked for again
        self._start_version = start_version
        self._free_version = free_version
        self._room = room
        self._drain_timeout_s = drain_timeout_s
        self._on_swap = on_swap
        self.guard = guard
        self._wake = asyncio.Event()
        self._requested = 0
        self._completed = 0
        self._passed = asyncio.Condition()
        self._changed_at = time.monotonic()
        self._retiring: set[asyncio.Task[None]] = set()

    # -- routing ---------------------------------------------------------------------------

    def route(self, pin: str | None, routing_key: str | None) -> Lease:
        """Hold the version a request goes to (`resolve`); the caller releases the lease."""
        version, role = self.resolve(pin, routing_key)
        version.acquire(role)
        return Lease(version, role, self._ended if role == CANARY and self.guard else None)

    def resolve(self, pin: str | None, routing_key: str | None) -> tuple[Version, str]:
        """The ready version a request goes to, and its role.

        Raises:
            NotReadyError: no stable version serves now (loading, or a resource-policy swap).
            VersionNotFoundError: a pin naming no version (or `canary` with none set).
            VersionNotReadyError: a pinned version that is not ready.
        """
        traffic = self.traffic
        if pin is None:
            name, role = traffic.choose(routing_key)
            if name is None:
                raise NotReadyError("no version serves now: the stable version is loading")
        elif pin == STABLE:
            name, role = traffic.stable, STABLE
            if name is None:
                raise NotReadyError("no version serves now: the stable version is loading")
        elif pin == CANARY:
            name, role = traffic.canary, CANARY
            if name is None:
                raise VersionNotFoundError("no canary version is set")
        else:
            name, role = pin, PINNED
        version = self.versions.get(name)
        if version is None:
            raise VersionNotFoundError(f"version '{name[:64]}' is not a version of this model")
        if version.state is not VersionState.READY:
            raise VersionNotReadyError(
                f"version '{name}' is {version.state.value}, not ready", retry_after_s=5
            )
        return version, role

    def _ended(self, lease: Lease, error: BaseException | None) -> None:
        """A canary request ended: roll the canary back when its failures pass the limit."""
        assert self.guard is not None
        name = lease.version.name
        ratio = self.guard.record(name, error)
        canary = self.desired.canary
        if ratio is None or canary is None or canary.version != name:
            return
        reason = (
            f"canary rolled back: {ratio:.0%} of its last {self.guard.window} requests failed "
            f"(SIDECAR_CANARY_MAX_ERROR_RATIO={self.guard.max_ratio:g})"
        )
        logger.warning("version %s: %s", name, reason)
        lease.version.reason = reason
        self.adopt(list(self.versions), dataclasses.replace(self.desired, canary=None))
        self.wake()

    def stable(self) -> Version | None:
        name = self.traffic.stable
        return None if name is None else self.versions.get(name)

    # -- desired state ---------------------------------------------------------------------

    def adopt(self, names: Sequence[str], desired: DesiredState) -> None:
        """Know `names` as the versions under the root, and want `desired` (stable resolved)."""
        for name in names:
            self.versions.setdefault(name, Version(name))
        if desired.stable is None and names:
            desired = dataclasses.replace(desired, stable=names[-1])
        if desired != self.desired:
            self.desired = desired
            self._changed_at = time.monotonic()

    def check(self, desired: DesiredState) -> None:
        """Refuse a desired state naming a version absent from the root (400)."""
        known = set(self.versions)
        for name in desired.named():
            if name not in known:
                raise InvalidInputError(f"version '{name}' is not a version under the model root")

    async def apply(self, desired: DesiredState) -> None:
        """Want `desired` (admin): retry its failed versions, run a pass, return when done."""
        self.check(desired)
        self._retry.update(desired.named())
        self.adopt(sorted(self.versions, key=loaders.version_order), desired)
        await self.reconcile_now()

    async def apply_document(self, data: Any) -> None:
        """`apply` of a desired state as the admin API's JSON body gives it (400 if invalid)."""
        try:
            desired = DesiredState.parse(data)
        except loaders.VersionsFileError as exc:
            raise InvalidInputError(str(exc)) from None
        await self.apply(desired)

    async def load(self, name: str) -> Version:
        version = self._known(name)
        self._pinned.add(name)
        self._retry.add(name)
        await self.reconcile_now()
        return version

    async def unload(self, name: str) -> Version:
        version = self._known(name)
        if name in self.traffic.names():
            raise ConflictError(
                f"version '{name}' serves traffic; set the traffic elsewhere before unloading it"
            )
        if name in self.desired.named():
            raise ConflictError(f"version '{name}' is named by the desired state")
        self._pinned.discard(name)
        if version.resident:
            await self._retire(version)
        return version

    async def rollback(self) -> str:
        """Make the previous stable version stable again (drop the canary); its name."""
        current = self.traffic.stable
        candidates = [n for n in reversed(self.history) if n != current and n in self.versions]
        if not candidates:
            raise ConflictError("there is no previous stable version to roll back to")
        ready = [n for n in candidates if self.versions[n].state is VersionState.READY]
        previous = (ready or candidates)[0]
        await self.apply(dataclasses.replace(self.desired, stable=previous, canary=None))
        return previous

    def retry(self, name: str) -> None:
        """Try a failed version again on the next pass (its files changed, or asked for)."""
        self._retry.add(name)

    @property
    def retrying(self) -> bool:
        return bool(self._retry)

    def _known(self, name: str) -> Version:
        version = self.versions.get(name)
        if version is None:
            raise VersionNotFoundError(f"version '{name[:64]}' is not a version of this model")
        return version

    # -- the loop --------------------------------------------------------------------------

    async def reconcile_now(self) -> None:
        """Ask for a reconcile pass and wait until one that began after the ask has finished."""
        self._requested += 1
        target = self._requested
        self._wake.set()
        async with self._passed:
            await self._passed.wait_for(lambda: self._completed >= target)

    def wake(self) -> None:
        self._requested += 1
        self._wake.set()

    async def run(self) -> None:
        """The reconcile loop: one pass per wake-up, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            target = self._requested
            try:
                await self._reconcile()
            except Exception:
                logger.exception("reconcile pass failed")
            self._completed = target
            async with self._passed:
                self._passed.notify_all()

    async def _reconcile(self) -> None:
        desired = self.desired
        wanted = [*desired.named(), *sorted(self._pinned - set(desired.named()))]
        for name in wanted:
            version = self.versions.get(name)
            if version is None or version.resident:
                continue
            if version.state is VersionState.FAILED and name not in self._retry:
                continue
            self._retry.discard(name)
            await self._load(version, wanted)
        self._flip(desired)
        if self.traffic.stable is None:
            await self._fall_back(wanted)
        self._evict_surplus(desired)

    async def _fall_back(self, wanted: list[str]) -> None:
        """No stable serves (the desired one failed after a resource swap): reload the last."""
        for name in reversed(self.history):
            version = self.versions.get(name)
            if version is not None and version.state is not VersionState.FAILED:
                logger.warning("reloading version %s: the desired stable version failed", name)
                if not version.resident:
                    await self._load(version, [*wanted, name])
                if version.state is VersionState.READY:
                    self.traffic = dataclasses.replace(self.traffic, stable=name)
                    return

    async def _load(self, version: Version, wanted: list[str]) -> None:
        need = await asyncio.to_thread(self._estimate, version)  # stats files: off the loop
        keep = {*self.traffic.names(), *wanted}
        resident = [v for v in self.versions.values() if v.resident and v is not version]
        idle = [v for v in resident if v.name not in keep]
        idle.sort(key=lambda v: self.history.index(v.name) if v.name in self.history else -1)
        serving = [v for v in resident if v.name in keep and v.name not in wanted]
        plan = self.policy.plan(need, self._room(sum(v.weight_bytes for v in resident)), idle,
                                serving)  # fmt: skip
        if plan.refused is not None:
            await self._fail(version, plan.refused)
            return
        for name in plan.evict:
            await self._retire(self.versions[name])
        logger.info("loading version %s (%d bytes of weights)", version.name, need)
        version.move(VersionState.LOADING)
        started = time.perf_counter()
        try:
            version.served = await self._start_version(version.name)
        except StartupError as exc:  # what loading says: a corrupt file, no tokenizer, ...
            await self._fail(version, str(exc))
            return
        except Exception as exc:  # what the model's own code raised (out of memory, ...)
            logger.error("version %s: loading raised", version.name, exc_info=exc)
            await self._fail(version, f"{type(exc).__name__}: {exc}"[:500])
            return
        version.load_s = time.perf_counter() - started
        version.weight_bytes = version.served.report.weight_bytes
        version.move(VersionState.READY)
        logger.info("version %s ready in %.3fs", version.name, version.load_s)

    async def _fail(self, version: Version, reason: str) -> None:
        version.served = None
        if self.root is not None:
            reason = reason.replace(str(self.root), "<root>")  # no host path in what is shown
            directory = self.root / version.name
            version.failed_fingerprint = await asyncio.to_thread(loaders.fingerprint, directory)
        version.move(VersionState.FAILED, reason)
        logger.error("version %s failed: %s", version.name, reason)

    def warming(self, name: str) -> None:
        """The version's weights are in; its warm-up passes run now."""
        self.versions[name].move(VersionState.WARMING)

    def _estimate(self, version: Version) -> int:
        if self.root is None:
            return version.weight_bytes
        directory = self.root / version.name
        return sum(
            size
            for name, size, _ in loaders.fingerprint(directory)
            if name.endswith((".safetensors", ".onnx", ".onnx.data", ".onnx_data"))
        )

    def _flip(self, desired: DesiredState) -> None:
        """Publish the routing: what the desired state names and is ready (the old stable
        while the new one is not)."""

        def ready(name: str | None) -> str | None:
            version = self.versions.get(name) if name is not None else None
            return name if version is not None and version.state is VersionState.READY else None

        old = self.traffic
        traffic = Traffic.of(
            ready(desired.stable) or ready(old.stable),
            desired.canary if desired.canary and ready(desired.canary.version) else None,
            desired.shadow if desired.shadow and ready(desired.shadow.version) else None,
        )
        stable = traffic.stable
        if traffic == old:
            return
        self.traffic = traffic  # the flip: requests routed from here on see the new routing
        if stable != old.stable and old.stable is not None:
            self.history = [n for n in self.history if n != old.stable] + [old.stable]
            seconds = time.monotonic() - self._changed_at
            self._on_swap(seconds)
            logger.info("swap: stable %s -> %s (%.3fs)", old.stable, stable, seconds)
        logger.info("traffic: %s", traffic.public())

    def _evict_surplus(self, desired: DesiredState) -> None:
        """Retire ready versions beyond `resident`, keeping the most recent previous stables."""
        traffic = self.traffic
        keep = {*traffic.names(), *self._pinned}
        keep.update(desired.named())
        spare = max(0, desired.resident - len({n for n in keep if n is not None}))
        for name in reversed(self.history):
            if spare == 0:
                break
            kept = self.versions.get(name)
            if name not in keep and kept is not None and kept.state is VersionState.READY:
                keep.add(name)
                spare -= 1
        for version in self.versions.values():
            if version.state is VersionState.READY and version.name not in keep:
                # Draining from now on: no later pass can route to it before it is gone.
                self._drain(version)
                task = asyncio.create_task(self._unload(version), name=f"retire-{version.name}")
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    async def _retire(self, version: Version) -> None:
        """Drain a version (its admitted requests finish), stop it and free its memory."""
        if not version.resident or version.state is VersionState.DRAINING:
            return
        self._drain(version)
        await self._unload(version)

    def _drain(self, version: Version) -> None:
        """Take a version out of the routing and mark it draining (no request is routed to it
        any more; those admitted before finish)."""
        traffic = self.traffic
        if version.name in traffic.names():
            self.traffic = traffic.without(version.name)
            if traffic.stable == version.name:
                self.history = [n for n in self.history if n != version.name] + [version.name]
        version.move(VersionState.DRAINING, version.reason)  # a rollback's reason stays
        logger.info("draining version %s: %d requests in flight", version.name, version.inflight)

    async def _unload(self, version: Version) -> None:
        """Once a draining version's requests are done, stop it and free its memory."""
        if not await version.idle(self._drain_timeout_s):
            logger.warning("version %s: drain timeout with %d requests in flight",
                           version.name, version.inflight)  # fmt: skip
        await self._free_version(version)
        version.served = None
        version.move(VersionState.UNLOADED, version.reason)
        logger.info("version %s unloaded", version.name)
        if version.name in (*self.desired.named(), *self._pinned):
            self.wake()  # wanted again while it drained (a rollback to it): load it back

    async def stop(self) -> None:
        """Wait for retiring versions; the caller stops the engines still resident."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def public(self) -> dict[str, Any]:
        """The admin API's view: versions, routing in force, desired state."""
        return {
            "versions": [v.public() for v in self.versions.values()],
            "traffic": self.traffic.public(),
            "desired": self.desired.public(),
            "history": list(self.history),
            "policy": self.policy.name,
        }
