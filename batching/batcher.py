"""The dynamic batcher: one queue, one forming task, one device thread, one future per item.

Callers `submit` items with a cost (token length) and a deadline; the batcher groups them, runs
`prepare` (collation) and `run` (the forward pass) on the device thread (collating the next batch
on a preparation thread while one runs), and hands each item's result or error back.

When a batch closes: at once when full, else by the window (`batching.window`). Two priority
classes: interactive items, and bulk items (`submit(..., bulk=True)`, for jobs) that run only in
the capacity interactive items leave, or in the free rows of their batches where these cost
nothing (`batching.lanes`).

Which items: the oldest queued item always goes in the next batch, with the items that
`select_batch` groups beside it (`batching.grouping`), priced by the batch cost measured from the
batches that ran (`BatchCost`; `seed_costs` fits it to warm-up passes before the first batch).
Items whose deadline passed or whose caller went away are dropped and never reach `run`; a
request the queue ahead would hold past its deadline is refused at once (`batching.admission`).

Failures: if `run` raises, the batch is split in halves and each retried, down to single items,
so only the failing item's caller gets the error (the failed pass's frames cleared first). Out
of memory (`is_oom`) also halves the token budget for `oom_cooldown_s` and runs `after_oom` on
the device thread before the halves. A fatal error (`is_fatal`: the device is unusable) is never
retried: the batch, the queue and every later submission fail at once with DeviceFailedError.
Results are set only on futures not already done. Batch figures carry `on_submit`'s tags.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Generic, TypeVar

from batching.admission import Admission
from batching.arrivals import ArrivalRate
from batching.config import BatchConfig
from batching.costs import BatchCost
from batching.device import Device
from batching.dispatch import Dispatch
from batching.errors import (
    BatcherClosedError,
    BatchOutputError,
    DeadlineExceededError,
    ItemTooLargeError,
    QueueFullError,
)
from batching.lanes import BulkLane
from batching.observer import BatchObserver
from batching.passes import Passes
from batching.queue import Entry, ItemQueue, fail, withdraw
from batching.steps import Steps
from batching.window import close_in

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
PreparedT = TypeVar("PreparedT")
ResultT = TypeVar("ResultT")


class Batcher(Generic[ItemT, PreparedT, ResultT]):
    """Dynamic batcher; see the module docstring for the dispatch rules.

    Args:
        prepare: collates items into the batch function's input; runs on the preparation thread.
        run: the forward pass, returning one result per prepared item; runs on the device thread.
        config: the batching bounds.
        observer: receives per-batch figures and rejections.
        is_oom: tells whether an exception from `run` is an out-of-memory error.
        after_oom: runs on the device thread after out-of-memory, before the halves are retried.
        is_fatal: tells whether an exception from `run` leaves the device unusable (a CUDA error
            that poisons the context): everything then fails at once with DeviceFailedError.
        run_executor: the single thread that owns the device (one is created when omitted).
        prepare_executor: the thread collating a batch while another runs (created if omitted).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        prepare: Callable[[Sequence[ItemT]], PreparedT],
        run: Callable[[PreparedT], Sequence[ResultT]],
        config: BatchConfig,
        *,
        observer: BatchObserver | None = None,
        is_oom: Callable[[BaseException], bool] | None = None,
        after_oom: Callable[[], None] | None = None,
        is_fatal: Callable[[BaseException], bool] | None = None,
        run_executor: Executor | None = None,
        prepare_executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        run_steps: Callable[[PreparedT], Steps[ResultT]] | None = None,
        steps: int = 1,
    ) -> None:
        self._prepare = prepare
        self.config = config
        self._observer = observer or BatchObserver()
        self._device = Device(
            run_executor, max_tokens=config.max_tokens, oom_cooldown_s=config.oom_cooldown_s,
            is_oom=is_oom, after_oom=after_oom, is_fatal=is_fatal, clock=clock,
        )  # fmt: skip
        self._owns_prepare = prepare_executor is None
        self._prepare_executor = prepare_executor or ThreadPoolExecutor(1, "batch-prepare")
        self._clock = clock
        self._queue: ItemQueue[ItemT, ResultT] = ItemQueue()
        self._bulk: BulkLane[ItemT, ResultT] = BulkLane(
            config.bulk_guard_s, config.bulk_floors, clock, steps=steps if run_steps else 1
        )
        self._window_closes_at: float | None = None  # of the interactive items queued
        self._passes = Passes(prepare, run, run_steps if steps > 1 else None, self._device, clock)
        self._seq = itertools.count()
        self._arrivals = ArrivalRate()
        self._admission = Admission(config.queue_max)
        self._cost = BatchCost()
        self._inflight = 0
        self._idle_since = clock()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._former: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queue_depth(self) -> int:
        """Interactive items queued and not yet in a batch."""
        return len(self._queue)

    @property
    def bulk_depth(self) -> int:
        """Bulk items queued and not yet in a batch."""
        return len(self._bulk)

    @property
    def batch_overhead_tokens(self) -> float | None:
        """The measured fixed cost of one batch in padded tokens (None: unknown; `inf`: tokens
        cost nothing measurable): the time of the smallest batch, which on a GPU holds up to
        `batch_knee_tokens`, over the time of one padded token beyond the knee."""
        return self._cost.overhead_tokens if self._cost.fitted else None

    @property
    def batch_knee_tokens(self) -> float | None:
        """Padded tokens a batch holds for the floor alone (about 0 on a CPU); None: unknown."""
        return self._cost.knee_tokens if self._cost.fitted else None

    def seed_costs(self, samples: Iterable[tuple[int, float]]) -> None:
        """Fit the batch cost to timed warm-up passes, so that batches are costed from the first
        (without, they fill greedily until 8 real batches of different sizes have run).

        Args:
            samples: (padded tokens, seconds) of passes from one short item to a full batch.
        """
        self._cost.seed(samples)

    @property
    def device_error(self) -> BaseException | None:
        """The error `is_fatal` called fatal, after which nothing runs; None while it works."""
        return self._device.error

    def running_for_s(self, now: float | None = None) -> float | None:
        """How long the device thread has been in its current call, a forward pass (with its
        collation on an idle device) or `after_oom`; None when idle. For a watchdog."""
        return self._device.running_for_s(now)

    def token_budget(self, now: float | None = None) -> int:
        """Padded tokens allowed per batch now (lower for a while after out-of-memory)."""
        return self._device.token_budget(now)

    async def start(self) -> None:
        """Start the forming task."""
        if self._former is None:
            self._former = asyncio.create_task(self._form_loop(), name="batcher-former")

    async def submit(
        self,
        items: Sequence[ItemT],
        costs: Sequence[int],
        *,
        deadline: float | None = None,
        bulk: bool = False,
    ) -> list[ResultT]:
        """Queue `items` and return their results in order.

        Args:
            items: the request's items; all are accepted or none.
            costs: per-item cost (token length), at most `config.max_tokens` each.
            deadline: monotonic time by which results are needed.
            bulk: the lower priority class (`batching.lanes`): no admission bound, the caller
                bounds what it queues.

        Raises:
            QueueFullError: the queue cannot take the items now: full, or its items ahead
                would take past the deadline (`batching.admission`).
            DeadlineExceededError: the deadline passed first.
            BatcherClosedError: the batcher was stopped.
            DeviceFailedError: the device failed for good (see `is_fatal`).
            ItemTooLargeError: an item could never fit in a batch.
        """
        if self._closed:
            raise BatcherClosedError("the batcher is not accepting work")
        if self._device.error is not None:
            raise self._device.failure()
        if len(items) != len(costs):
            raise ValueError("items and costs differ in length")
        if not items:
            return []
        max_tokens = self.config.max_tokens
        if too_large := [cost for cost in costs if not 0 < cost <= max_tokens]:
            raise ItemTooLargeError(f"item cost {too_large[0]} outside 1..{max_tokens} tokens")
        now = self._clock()
        if deadline is not None and deadline <= now:
            self._observer.on_reject("deadline", len(items))
            raise DeadlineExceededError("the deadline passed before the request was queued")
        try:
            if not bulk:
                self._admission.check(len(self._queue), len(items), now, deadline)
        except QueueFullError:
            self._observer.on_reject("queue_full", len(items))
            raise

        new_future, padded = asyncio.get_running_loop().create_future, self.config.padded_length
        tag = self._observer.on_submit()  # in the caller's task: a tracer reads its context
        entries = [
            Entry(item, cost, padded(cost), deadline, now, new_future(), next(self._seq), tag)
            for item, cost in zip(items, costs, strict=True)
        ]
        if bulk:
            self._bulk.queue.add(entries)
        else:
            self._queue.add(entries)
            self._arrivals.record(now, len(entries))
        self._wakeup.set()
        try:
            async with asyncio.timeout(None if deadline is None else deadline - now):
                return list(await asyncio.gather(*(entry.future for entry in entries)))
        except TimeoutError:
            self._abandon(entries, "deadline")
            raise DeadlineExceededError("the deadline passed before the result was ready") from None
        except asyncio.CancelledError:
            self._abandon(entries, "cancelled")
            raise
        except DeadlineExceededError:
            self._abandon(entries, "deadline")
            raise
        except BaseException:
            self._abandon(entries, None)
            raise

    async def stop(self) -> None:
        """Stop forming batches and fail what is still queued with BatcherClosedError."""
        self._closed = True
        tasks = [t for t in (self._former, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._former = None
        stopped = self._queue.clear() + self._bulk.queue.clear()
        fail(stopped, lambda: BatcherClosedError("the batcher stopped"))
        if self._owns_prepare:
            self._prepare_executor.shutdown(wait=False, cancel_futures=True)
        self._device.shutdown()

    # -- forming ---------------------------------------------------------------------------

    async def _form_loop(self) -> None:
        while True:
            self._wakeup.clear()
            wait_s = self._try_dispatch(self._clock())
            if wait_s == 0.0:
                continue
            try:
                async with asyncio.timeout(None if math.isinf(wait_s) else wait_s):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    def _try_dispatch(self, now: float) -> float:
        """Dispatch a batch if one should go now; else return how long to wait (inf: for news)."""
        if self._inflight >= 2:
            return math.inf
        oldest = self._queue.oldest(now)
        self._window_closes_at = None if oldest is None else self._window_closes_at
        if self._inflight == 0:
            self._bulk.resume.set()  # a paused bulk pass looks again
        idle = self._inflight == 0 and not self._bulk.running
        if idle and self._bulk.due(now, interactive_waiting=oldest is not None):
            self._dispatch(now, self.token_budget(now), full_only=False, bulk=True)
            return 0.0
        if oldest is None or (self._inflight and self._bulk.overdue(now)):
            return math.inf  # nothing to do, or the device frees for the starving bulk lane
        config, queued = self.config, len(self._queue)
        budget = self.token_budget(now)
        might_fill = queued >= config.max_size or queued * self._queue.largest_length() > budget
        # A full batch goes at once; on a busy device it is prepared while the current one runs.
        if might_fill and self._dispatch(now, budget, full_only=True):
            return 0.0
        if self._inflight:
            return math.inf
        wait_s = close_in(
            config,
            waited=now - oldest.enqueued_at,
            queued=queued,
            expected=self._arrivals.expected,
        )
        if wait_s == 0.0:
            self._dispatch(now, budget, full_only=False)
        self._window_closes_at = now + wait_s
        return wait_s

    def _dispatch(self, now: float, budget: int, *, full_only: bool, bulk: bool = False) -> bool:
        config, queue = self.config, self._bulk.queue if bulk else self._queue
        if bulk:
            budget = min(budget, self._bulk.token_budget(self._cost, budget))
            self._bulk.started(now)
        batch = queue.take(
            now,
            max_size=config.max_size,
            max_tokens=budget,
            max_padding=config.max_padding,
            batch_overhead=self._cost.overhead_tokens,  # inf until fitted: the greedy fill
            batch_knee=self._cost.knee_tokens,
            full_only=full_only,
        )
        if not batch:
            return False
        if not bulk:  # bulk items ride in the rows its floor pays for anyway (a GPU)
            batch += self._bulk.riders(batch, self._cost, config, budget, now)
        idle = self._inflight == 0
        start = max(batch[0].enqueued_at, self._idle_since)
        stepped = bulk and self._passes.can_step
        self._inflight += 0 if stepped else 1  # a stepped pass leaves the device between steps
        dispatch = Dispatch(
            overlap=not idle,
            wait_s=now - start if idle and not bulk else 0.0,
            observe_from=start if idle and config.adaptive and not bulk else None,
            dispatched_at=now,
            bulk=bulk,
            stepped=stepped,
        )
        task = asyncio.create_task(self._process(batch, dispatch), name="batcher-batch")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    # -- running -----------------------------------------------------------------------------

    async def _process(self, batch: list[Entry[ItemT, ResultT]], dispatch: Dispatch) -> None:
        try:
            loop = asyncio.get_running_loop()
            prepared: PreparedT | None = None
            if dispatch.overlap:
                # Collate while the current batch runs. Failures fall through to the device
                # thread, which prepares again, half by half if need be.
                with contextlib.suppress(Exception):
                    prepared = await loop.run_in_executor(
                        self._prepare_executor, self._prepare, [e.item for e in batch]
                    )
            await self._execute(batch, prepared, dispatch)
        finally:
            self._inflight -= 0 if dispatch.stepped else 1
            done = self._clock()
            if dispatch.observe_from is not None:
                end = min(done, dispatch.observe_from + self.config.window_s)
                self._arrivals.observe(dispatch.observe_from, end)
            if self._inflight == 0 and not dispatch.stepped:
                self._idle_since = done
            waits = [dispatch.bulk_wait_s] * len(batch) if dispatch.bulk_wait_s else []
            if dispatch.bulk:  # a stepped pass's waits were counted as interactive batches ran
                ended = self._bulk.ended(done, self._queue)
                waits = [] if dispatch.stepped else ended
            for waited_s in waits:
                self._observer.on_interactive_wait(waited_s)
            self._wakeup.set()

    async def _execute(
        self,
        batch: list[Entry[ItemT, ResultT]],
        prepared: PreparedT | None,
        dispatch: Dispatch,
    ) -> None:
        try:
            if dispatch.stepped:
                between = functools.partial(self._bulk.pause, self._may_step)
                run = await self._passes.stepped(batch, prepared, between)
            else:
                run = await self._device.call(self._passes.whole, batch, prepared, dispatch)
        except Exception as exc:
            padded_tokens = self.config.padded_tokens(len(batch), max(e.cost for e in batch))
            out_of_memory = self._device.take_failure(exc, padded_tokens)
            live = [e for e in batch if not e.dropped and not e.future.done()]
            if self._device.error is not None:
                # No halving on a dead device: every retry would fail the same way.
                fail(live + self._queue.clear(), self._device.failure)
                return
            if len(live) <= 1:
                for entry in live:
                    entry.future.set_exception(exc)
                return
            logger.debug("batch of %d failed (%s); retrying halves", len(live), type(exc).__name__)
        else:
            self._deliver(*run, dispatch)
            return
        # The failed pass's exception is gone by now (its frames cleared too): nothing keeps
        # that batch's activations alive while the device frees memory and runs the halves.
        if out_of_memory:
            await self._device.release_memory()
        middle = len(live) // 2
        for half in (live[:middle], live[middle:]):
            await self._execute(half, None, dispatch)

    def _deliver(
        self,
        live: list[Entry[ItemT, ResultT]],
        results: Sequence[ResultT],
        started: float,
        elapsed: float,
        dispatch: Dispatch,
    ) -> None:
        if not live:
            return
        if len(results) != len(live):
            message = f"batch function returned {len(results)} results for {len(live)} items"
            fail(live, lambda: BatchOutputError(message))
            return
        for entry, result in zip(live, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)
        size, longest = len(live), max(e.cost for e in live)
        padded_tokens = self.config.padded_tokens(size, longest)
        self._admission.observe(size, elapsed)
        self._cost.observe(padded_tokens, elapsed)
        if not dispatch.bulk:
            self._bulk.observe_interactive(padded_tokens)
        self._observer.on_batch(dispatch.stats(live, padded_tokens, started, elapsed))

    def _may_step(self) -> bool:
        passes, now = self._passes, self._clock()
        closes_at = self._window_closes_at
        return self._bulk.may_step(
            now, self._inflight, closes_at, passes.step_ended_at, passes.step_s
        )

    def _abandon(self, entries: list[Entry[ItemT, ResultT]], reason: str | None) -> None:
        count = withdraw(entries, (self._queue, self._bulk.queue))
        if reason is not None and count:
            self._observer.on_reject(reason, count)
