"""Estimating whether waiting for company can pay off: the arrival rate a forming batch sees."""

from __future__ import annotations

import bisect


class ArrivalRate:
    """Items per second that arrive while a batch could still grow.

    Each observation spans from the moment a batch started waiting on an idle device to the
    earlier of its window's end and its results going out. Arrivals after the results went out
    are left out: a closed-loop client sends its next request only then, and counting it would
    make a lone client look like company worth waiting for. The rate is an exponentially
    weighted mean of the observations, so it follows load changes within a few batches.
    """

    def __init__(self, *, weight: float = 0.3, max_log: int = 4096) -> None:
        self._weight = weight
        self._max_log = max_log
        self._times: list[float] = []
        self.per_s = 0.0

    def record(self, now: float, count: int = 1) -> None:
        """Log `count` arrivals at `now` (monotonic seconds, non-decreasing)."""
        self._times.extend([now] * count)
        if len(self._times) > self._max_log:
            del self._times[: len(self._times) - self._max_log // 2]

    def observe(self, start: float, end: float) -> None:
        """Fold in the arrivals strictly after `start` and up to `end`."""
        if end - start < 1e-4:
            return
        count = bisect.bisect_right(self._times, end) - bisect.bisect_right(self._times, start)
        sample = count / (end - start)
        self.per_s += self._weight * (sample - self.per_s)

    def expected(self, within_s: float) -> float:
        """Arrivals expected in the next `within_s` seconds."""
        return self.per_s * max(within_s, 0.0)
