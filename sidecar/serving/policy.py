"""Swap policies: what to do when the device lacks room for the new version beside the old.

    availability  (default) the serving version is never unloaded for a new one: versions that
                  serve no traffic are evicted to make room, and without room the load is
                  refused, with the reason, while the old version keeps serving.
    resource      versions the desired state no longer names, the serving stable included, are
                  unloaded first; requests meet 503 + Retry-After until the new one is ready.

Room is the memory budget (SIDECAR_VERSIONS_MAX_BYTES, *addition*) less what resident versions
hold, and on CUDA no more than the free device memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sidecar.serving.versions import Version


@dataclass(frozen=True)
class Plan:
    """Versions to unload before the load, or the reason the load is refused."""

    evict: tuple[str, ...] = ()
    refused: str | None = None


class SwapPolicy(Protocol):
    name: str

    def plan(
        self, need: int, room: int | None, idle: Sequence[Version], serving: Sequence[Version]
    ) -> Plan:
        """How to fit `need` bytes into `room` (None: unbounded).

        Args:
            idle: resident versions no traffic names, least wanted first (evictable freely).
            serving: resident versions serving traffic the desired state no longer wants.
        """
        ...


def _fit(need: int, room: int, candidates: Sequence[Version]) -> list[Version] | None:
    chosen: list[Version] = []
    for version in candidates:
        if need <= room:
            break
        chosen.append(version)
        room += version.weight_bytes
    return chosen if need <= room else None


def _refusal(need: int, room: int, policy: str) -> str:
    return (
        f"out of memory: the version needs {need} bytes and {max(room, 0)} are free for it "
        f"(SIDECAR_SWAP_POLICY={policy}: no room for two versions; the serving version is kept)"
    )


class AvailabilityPolicy:
    """Load the new beside the old; never unload a serving version to make room."""

    name = "availability"

    def plan(
        self, need: int, room: int | None, idle: Sequence[Version], serving: Sequence[Version]
    ) -> Plan:
        if room is None or need <= room:
            return Plan()
        chosen = _fit(need, room, idle)
        if chosen is None:
            return Plan(refused=_refusal(need, room, self.name))
        return Plan(evict=tuple(v.name for v in chosen))


class ResourcePolicy:
    """Unload what the desired state no longer names first when both do not fit."""

    name = "resource"

    def plan(
        self, need: int, room: int | None, idle: Sequence[Version], serving: Sequence[Version]
    ) -> Plan:
        if room is None or need <= room:
            return Plan()
        chosen = _fit(need, room, [*idle, *serving])
        if chosen is None:
            total = room + sum(v.weight_bytes for v in (*idle, *serving))
            return Plan(
                refused=f"out of memory: the version needs {need} bytes, more than the "
                f"{max(total, 0)} the budget holds with every other version unloaded"
            )
        return Plan(evict=tuple(v.name for v in chosen))


def room(budget: int, resident_bytes: int, free_device_bytes: int | None) -> int | None:
    """Bytes free for another version: the budget (0: none) less what resident versions hold,
    and no more than the device's free memory (on CUDA); None: unbounded."""
    left = budget - resident_bytes if budget else None
    if free_device_bytes is not None:
        left = free_device_bytes if left is None else min(left, free_device_bytes)
    return left


def swap_policy(name: str) -> SwapPolicy:
    """The policy SIDECAR_SWAP_POLICY names."""
    return ResourcePolicy() if name == "resource" else AvailabilityPolicy()
