"""Throttled INFO logging of a long weight load: bytes done, throughput so far and time left."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["ProgressLog"]

logger = logging.getLogger(__name__)


class ProgressLog:
    """Logs progress at most once per `interval_s`, and only once the load has run that long.

    A load shorter than `interval_s` logs nothing here (its summary line says it all); a long one
    logs about once a second, however many chunks complete in between. The clock is injectable so
    that tests can drive the throttling without sleeping.
    """

    def __init__(
        self,
        total_bytes: int,
        *,
        started: float,
        clock: Callable[[], float] = time.perf_counter,
        interval_s: float = 1.0,
    ) -> None:
        self._total_bytes = total_bytes
        self._started = started
        self._clock = clock
        self._interval_s = interval_s
        self._next_at = started + interval_s

    def update(self, done_bytes: int) -> None:
        """Record that `done_bytes` of the total are done; log if a line is due."""
        if done_bytes >= self._total_bytes:
            return
        now = self._clock()
        if now < self._next_at:
            return
        self._next_at = now + self._interval_s
        elapsed_s = now - self._started
        rate = done_bytes / elapsed_s if elapsed_s > 0 else 0.0
        eta = f"{(self._total_bytes - done_bytes) / rate:.1f} s" if rate > 0 else "unknown"
        logger.info(
            "loading weights: %.2f of %.2f GB (%.0f%%) in %.1f s, %.2f GB/s, ETA %s",
            done_bytes / 1e9,
            self._total_bytes / 1e9,
            100 * done_bytes / self._total_bytes,
            elapsed_s,
            rate / 1e9,
            eta,
        )
