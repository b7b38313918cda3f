"""The device thread: one call at a time, how long the current one has run, and what a failed
one leaves behind."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class DeviceThread:
    """Runs calls on the single thread that owns the device and times the one in progress.

    Args:
        executor: a single-thread executor that owns the device; one is created (and shut down
            by `shutdown`) when omitted.
        clock: monotonic seconds.
    """

    def __init__(self, executor: Executor | None, clock: Callable[[], float]) -> None:
        self._owned = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="batch-run")
        self._clock = clock
        # Written by the device thread, read from any thread: one attribute store is enough.
        self._busy_since: float | None = None

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the device thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed, fn, *args)

    def running_for_s(self, now: float | None = None) -> float | None:
        """How long the call in progress has been running; None when there is none."""
        since = self._busy_since
        if since is None:
            return None
        return (self._clock() if now is None else now) - since

    def shutdown(self) -> None:
        """Shut the thread down if this object created it; queued calls are cancelled."""
        if self._owned:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _timed(self, fn: Callable[..., T], *args: object) -> T:
        self._busy_since = self._clock()
        try:
            return fn(*args)
        finally:
            self._busy_since = None


def release_frames(exc: BaseException) -> None:
    """Drop the locals of the finished frames in `exc`'s traceback and in those it chains to.

    A failed forward pass leaves its tensors (activations, the collated batch) in those frames,
    alive for as long as the exception is: an out-of-memory retry would run while they still
    hold device memory. The traceback itself, which logging needs, stays.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        pending += [error.__cause__, error.__context__]
