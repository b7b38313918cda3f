"""The bulk lane: items of the lower priority class (jobs), run only in capacity that
interactive items leave.

- A bulk batch goes only on an idle device (no batch running or being prepared) with no
  interactive item queued. An interactive item that arrives meanwhile waits for at most that one
  bulk batch, and the bulk batch is sized to cost about one short forward pass: at most the
  padded tokens of a typical interactive batch (smoothed over the recent ones), and at least
  `knee + floors x overhead` by the measured batch cost (`BatchCost`): `1 + floors` times the
  cost of the smallest batch (on a GPU, up to its knee, where a pass costs the same whatever it
  holds). Bulk items are grouped by length like interactive ones.
- Starvation guard: once bulk items have waited `guard_s` since the last bulk batch went, the
  next moment the device frees goes to one bulk batch (the interactive batch that would have
  been prepared meanwhile waits for it), so a job keeps moving under constant interactive load,
  at one bulk batch per `guard_s` at least.
- Stepped passes (`batching.steps`, when the model's pass can pause between layers): a bulk
  batch runs a step per device call and holds `steps / 2` times the tokens above, so one step
  costs about half a short pass (a batch of 13 to 32 short texts costs about the same per text
  on a CPU; halving the step halves what it makes an interactive batch wait). It leaves the
  device between steps: interactive batches are dispatched as on an idle device and run at the
  next pause, and the bulk pass waits while one is in flight or due before its next step would
  end. Once it has waited `guard_s`, the starvation guard runs the rest of it without pauses
  (one bulk batch per `guard_s` at least, as above).
- Riders (`riders`): an interactive batch takes bulk items into its free rows as far as the
  fitted cost says they add at most `bulk_rider_share` (2%) to its time. On a GPU, where a pass
  costs its floor up to a knee, that fills the batch: this is the job's share of a device that an
  open loop of interactive traffic keeps busy with part-full batches, leaving no idle moment
  between them. On a CPU every row costs about as much as a short item's tokens, so a small
  batch takes none (a large one may take one or two).
- Bulk items have no deadline and no admission bound: their submitter bounds how many it has
  queued at once.

What bulk batches cost interactive items (`on_interactive_wait`): for each interactive item that
arrived while a whole bulk batch ran, how long it waited for that batch to end; for a stepped
pass, how long a step held back the interactive batch dispatched while it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Generic, TypeVar

from batching.config import BatchConfig
from batching.costs import BatchCost
from batching.queue import Entry, ItemQueue

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

# Padded tokens of a bulk batch while the batch cost is still unknown: small enough that on any
# device one such batch is a short pass.
UNFITTED_TOKENS = 512
_SMOOTHING = 0.1  # weight of the newest interactive batch in the typical one


class BulkLane(Generic[ItemT, ResultT]):
    """The bulk queue and the rules for when and how much of it runs.

    Args:
        guard_s: the starvation guard: the longest bulk items wait between two bulk batches.
        floors: a bulk batch costs at most `1 + floors` smallest batches.
        clock: monotonic seconds.
    """

    def __init__(
        self, guard_s: float, floors: float, clock: Callable[[], float], *, steps: int = 1
    ) -> None:
        self.queue: ItemQueue[ItemT, ResultT] = ItemQueue()
        self.guard_s = guard_s
        self.floors = floors
        self.steps = steps
        self.resume = asyncio.Event()  # set when a paused stepped pass should look again
        self._clock = clock
        self._last_s = clock()  # when the last bulk batch went (or the lane last emptied)
        self._running_since: float | None = None
        self._typical_tokens = 0.0  # padded tokens of interactive batches, smoothed
        self._forced = False  # the starvation guard fired for the running stepped pass

    def __len__(self) -> int:
        return len(self.queue)

    def due(self, now: float, *, interactive_waiting: bool) -> bool:
        """Whether a bulk batch should go now, if the device is idle."""
        live = self.queue.oldest(now) is not None
        return live and (not interactive_waiting or self.overdue(now))

    def overdue(self, now: float) -> bool:
        """Whether the starvation guard asks for the next idle moment."""
        return bool(self.queue) and now - self._last_s >= self.guard_s

    def may_step(
        self,
        now: float,
        inflight: int,
        window_closes_at: float | None,
        last_step_end: float,
        step_s: float,
    ) -> bool:
        """Whether a paused stepped pass may take its next step now.

        Args:
            now: monotonic seconds.
            inflight: interactive batches dispatched and not ended: they go first.
            window_closes_at: when the queued interactive items' batch is due (None: none is
                queued); a step goes only if it would end before.
            last_step_end: when the pass's latest step ended (for the starvation guard).
            step_s: how long that step ran.
        """
        if self._forced or now - max(self._last_s, last_step_end) >= self.guard_s:
            self._forced = True  # the guard fired: the pass runs to its end
            return True
        if inflight:
            return False
        return window_closes_at is None or now + step_s <= window_closes_at

    async def pause(self, may_step: Callable[[], bool]) -> None:
        """Between two steps of a stepped pass: wait until `may_step()`, asked again each time
        `resume` is set and at least every `guard_s`."""
        while not may_step():
            self.resume.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.guard_s):
                    await self.resume.wait()

    @property
    def running(self) -> bool:
        """A bulk batch left the queue and has not ended."""
        return self._running_since is not None

    def observe_interactive(self, padded_tokens: int) -> None:
        """An interactive batch of `padded_tokens` ran."""
        self._typical_tokens += _SMOOTHING * (padded_tokens - self._typical_tokens)

    def token_budget(self, cost: BatchCost, max_tokens: int) -> int:
        """Padded tokens one bulk batch may hold (a lone longer item still goes alone): what
        costs one short pass, times `steps / 2` when the pass runs a step at a time."""
        if not cost.fitted:
            floor = float(UNFITTED_TOKENS)
        elif math.isinf(cost.overhead_tokens):
            return max_tokens  # tokens cost nothing measurable: a full batch is a short pass
        else:
            floor = cost.knee_tokens + self.floors * cost.overhead_tokens
        return max(
            1, min(max_tokens, int(max(1.0, self.steps / 2) * max(floor, self._typical_tokens)))
        )

    def riders(
        self,
        batch: list[Entry[ItemT, ResultT]],
        cost: BatchCost,
        config: BatchConfig,
        max_tokens: int,
        now: float,
    ) -> list[Entry[ItemT, ResultT]]:
        """Bulk items to ride in an interactive batch's free rows, taken from the queue, oldest
        first: as many as the fitted cost says add at most `config.bulk_rider_share` to the
        batch's time, within `max_size` and `max_tokens` (padded as `config` pads). On a GPU
        below its knee rows cost nothing and the batch fills; on a CPU, where every row costs, a
        small batch takes none. None before the cost is fitted."""
        if not self.queue or not cost.fitted or config.bulk_rider_share == 0:
            return []  # no bulk item queued (interactive traffic alone), or riding is off
        knee, size, longest = cost.knee_tokens, len(batch), max(e.length for e in batch)
        beyond = max(0.0, config.padded_tokens(size, longest) - knee)
        allowed = config.bulk_rider_share * (cost.overhead_tokens + beyond)  # in tokens' time
        taken: list[Entry[ItemT, ResultT]] = []
        for entry in self.queue.entries():
            if entry.future.done():
                continue
            wider = max(longest, entry.length)
            padded = config.padded_tokens(size + 1, wider)
            if size == config.max_size or padded > max_tokens:
                break
            if max(0.0, padded - knee) - beyond > allowed:
                break
            size, longest = size + 1, wider
            taken.append(entry)
        for entry in taken:
            self.queue.discard(entry)
            entry.taken = True
        if taken:
            self._last_s = now  # the lane moved: the starvation guard counts from here
        return taken

    def started(self, now: float) -> None:
        """A bulk batch left the queue."""
        self._last_s = self._running_since = now
        self._forced = False

    def ended(self, now: float, interactive: ItemQueue[ItemT, ResultT]) -> list[float]:
        """A bulk batch ended: how long each interactive item that arrived meanwhile waited."""
        since, self._running_since = self._running_since, None
        if not self.queue:
            self._last_s = now
        if since is None:
            return []
        return [now - e.enqueued_at for e in interactive.entries() if e.enqueued_at >= since]
