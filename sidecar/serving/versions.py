"""A model version's actual state: where it is in its life, why, and the requests it holds.

    loading -> warming -> ready -> draining -> unloaded
        \\           \\                     (any load may end in failed, with a reason)
         `-----------`--> failed

A version is resident from `loading` until `unloaded`. Requests routed to it hold a lease; a
draining version is stopped and freed once the last lease is returned, so that requests
admitted before a flip finish where they began.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.serving.service import ServedModel


class VersionState(enum.Enum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    UNLOADED = "unloaded"


RESIDENT = (VersionState.LOADING, VersionState.WARMING, VersionState.READY, VersionState.DRAINING)


class Version:
    """One version under the model root (or the one snapshot served), and its actual state."""

    def __init__(self, name: str, *, weight_bytes: int = 0) -> None:
        self.name = name
        self.state = VersionState.UNLOADED
        self.reason: str | None = None
        self.served: ServedModel | None = None
        self.weight_bytes = weight_bytes  # estimated from the files until loaded
        self.since = time.time()
        self.load_s: float | None = None
        self.failed_fingerprint: object = None  # the files as they were when it failed
        self.requests: dict[str, int] = {}  # by role: stable, canary, pinned, shadow
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def move(self, state: VersionState, reason: str | None = None) -> None:
        self.state = state
        self.reason = reason
        self.since = time.time()

    @property
    def resident(self) -> bool:
        return self.state in RESIDENT

    @property
    def inflight(self) -> int:
        return self._inflight

    def acquire(self, role: str) -> None:
        """Hold the version for one request in `role` (it is not freed while any is held)."""
        self._inflight += 1
        self.requests[role] = self.requests.get(role, 0) + 1
        self._idle.clear()

    def release(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def idle(self, timeout_s: float) -> bool:
        """Wait until no request holds the version; False if `timeout_s` ran out first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def public(self) -> dict[str, Any]:
        """What the admin API and /v1/models say of it."""
        served = self.served
        return {
            "version": self.name,
            "state": self.state.value,
            "reason": self.reason,
            "since": round(self.since, 3),
            "weight_bytes": self.weight_bytes,
            "load_s": None if self.load_s is None else round(self.load_s, 4),
            "inflight": self._inflight,
            "requests": dict(self.requests),
            "device": served.engine.card.device if served else None,
        }


@dataclass(frozen=True)
class Lease:
    """A request's hold on the version it was routed to, and the role it was routed in."""

    version: Version
    role: str  # stable, canary, pinned
    # Told how the request ended (the canary guard), before the version is released.
    on_end: Callable[[Lease, BaseException | None], None] | None = None

    def release(self, error: BaseException | None = None) -> None:
        """The request ended (with `error`, if it failed): the version may drain now."""
        try:
            if self.on_end is not None:
                self.on_end(self, error)
        finally:
            self.version.release()
