"""The device as the batcher sees it: one thread, its health, and what a failed pass leaves."""

from __future__ import annotations

import asyncio
import logging
import math
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

from batching.errors import DeviceFailedError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Device:
    """The single thread that owns the device, and the state of the device it learns from
    failures: a token budget halved for a while after out-of-memory, and a fatal error after
    which nothing runs.

    Args:
        executor: a single-thread executor that owns the device; one is created (and shut down
            by `shutdown`) when omitted.
        max_tokens: padded tokens per batch while the device has memory to spare.
        oom_cooldown_s: how long the token budget stays halved after out-of-memory.
        is_oom: tells whether an exception from a call is an out-of-memory error.
        after_oom: runs on the device thread after out-of-memory (e.g. `torch.cuda.empty_cache`).
        is_fatal: tells whether an exception from a call leaves the device unusable.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        executor: Executor | None,
        *,
        max_tokens: int,
        oom_cooldown_s: float,
        is_oom: Callable[[BaseException], bool] | None,
        after_oom: Callable[[], None] | None,
        is_fatal: Callable[[BaseException], bool] | None,
        clock: Callable[[], float],
    ) -> None:
        self._owned = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="batch-run")
        self._max_tokens = max_tokens
        self._oom_cooldown_s = oom_cooldown_s
        self._is_oom = is_oom or (lambda _exc: False)
        self._after_oom = after_oom
        self._is_fatal = is_fatal or (lambda _exc: False)
        self._clock = clock
        self._oom_budget = max_tokens
        self._oom_until = -math.inf
        self.error: BaseException | None = None  # the fatal error, once there is one
        # Written by the device thread, read from any thread: one attribute store is enough.
        self._busy_since: float | None = None

    def failure(self) -> DeviceFailedError:
        """A DeviceFailedError caused by the fatal error, for one caller."""
        error = DeviceFailedError("the device failed; the process must restart")
        error.__cause__ = self.error
        return error

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the device thread.

        Raises:
            DeviceFailedError: a fatal error came first (even while this call was waiting).
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed, fn, *args)

    def running_for_s(self, now: float | None = None) -> float | None:
        """How long the call in progress has been running; None when there is none."""
        since = self._busy_since
        if since is None:
            return None
        return (self._clock() if now is None else now) - since

    def token_budget(self, now: float | None = None) -> int:
        """Padded tokens allowed per batch now (lower for a while after out-of-memory)."""
        now = self._clock() if now is None else now
        return self._oom_budget if now < self._oom_until else self._max_tokens

    def take_failure(self, exc: BaseException, padded_tokens: int) -> bool:
        """Learn from an exception a call of `padded_tokens` raised; True: out of memory.

        The exception's frames are cleared at once (see `release_frames`). A fatal error is
        kept in `error`; out-of-memory halves the token budget for the cool-down.
        """
        release_frames(exc)
        if self.error is None and self._is_fatal(exc):
            self.error = exc
            logger.critical("fatal device error (%s); failing all work", type(exc).__name__)
        if self.error is not None or not self._is_oom(exc):
            return False
        self._oom_budget = max(1, min(self.token_budget(), padded_tokens) // 2)
        self._oom_until = self._clock() + self._oom_cooldown_s
        logger.warning(
            "out of memory on %d padded tokens; budget now %d", padded_tokens, self._oom_budget
        )
        return True

    async def release_memory(self) -> None:
        """Run `after_oom` on the device thread; its failure is logged, not raised."""
        if self._after_oom is None:
            return
        try:
            await self.call(self._after_oom)
        except Exception:
            logger.exception("after_oom failed")

    def shutdown(self) -> None:
        """Shut the thread down if this object created it; queued calls are cancelled."""
        if self._owned:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _timed(self, fn: Callable[..., T], *args: object) -> T:
        if self.error is not None:
            raise DeviceFailedError("the device failed before this call ran")
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
