"""Routing: which resident version a request goes to, and in which role.

The registry publishes one immutable `Traffic` at a time; replacing it is the atomic flip. A
request pins a version (`X-Model-Version: <v>|stable|canary`, or a version in its path), or
takes the canary share of unpinned requests, sticky per routing key: a key hashes to one of
10 000 buckets, the same on every process and every restart, and the first `percent` x 100
buckets go to the canary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass

from loaders import Share

NUM_BUCKETS = 10_000
STABLE, CANARY, PINNED, SHADOW = "stable", "canary", "pinned", "shadow"
ROLES = (STABLE, CANARY, PINNED, SHADOW)


@dataclass(frozen=True)
class Traffic:
    """The routing in force: only ready versions are ever named."""

    stable: str | None = None
    canary: str | None = None
    canary_percent: float = 0.0
    shadow: str | None = None
    shadow_percent: float = 0.0

    @classmethod
    def of(cls, stable: str | None, canary: Share | None, shadow: Share | None) -> Traffic:
        return cls(
            stable=stable,
            canary=canary.version if canary else None,
            canary_percent=canary.percent if canary else 0.0,
            shadow=shadow.version if shadow else None,
            shadow_percent=shadow.percent if shadow else 0.0,
        )

    def names(self) -> set[str]:
        """The versions this routing sends requests to."""
        return {name for name in (self.stable, self.canary, self.shadow) if name is not None}

    def without(self, name: str) -> Traffic:
        """This routing with `name` taken out of every role (its share dropped)."""
        traffic = self
        if traffic.stable == name:
            traffic = dataclasses.replace(traffic, stable=None)
        if traffic.canary == name:
            traffic = dataclasses.replace(traffic, canary=None, canary_percent=0.0)
        if traffic.shadow == name:
            traffic = dataclasses.replace(traffic, shadow=None, shadow_percent=0.0)
        return traffic

    def choose(self, routing_key: str | None, draw: float | None = None) -> tuple[str | None, str]:
        """The version and role of an unpinned request (None: no stable version serves)."""
        canary = self.canary is not None and self.canary_percent > 0
        if canary and in_share(routing_key, self.canary_percent, draw):
            return self.canary, CANARY
        return self.stable, STABLE

    def shadows(self, draw: float | None = None) -> str | None:
        """The version a stable request is also run on, or None (outside the shadow share)."""
        if self.shadow is None or self.shadow_percent <= 0 or self.shadow == self.stable:
            return None
        return self.shadow if in_share(None, self.shadow_percent, draw) else None

    def public(self) -> dict[str, object]:
        return {
            "stable": self.stable,
            "canary": None
            if self.canary is None
            else {"version": self.canary, "percent": self.canary_percent},
            "shadow": None
            if self.shadow is None
            else {"version": self.shadow, "percent": self.shadow_percent},
        }


def bucket(routing_key: str) -> int:
    """The key's bucket in 0..9999: a stable hash (never Python's salted `hash`)."""
    digest = hashlib.blake2b(routing_key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % NUM_BUCKETS


def in_share(routing_key: str | None, percent: float, draw: float | None = None) -> bool:
    """Whether a request falls in a `percent` share: by its key's bucket, else at random."""
    if routing_key is not None:
        return bucket(routing_key) < percent * (NUM_BUCKETS / 100)
    return (random.random() if draw is None else draw) * 100 < percent
