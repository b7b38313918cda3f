"""How a batch runs on the device: whole, in one call, or a step per call (`batching.steps`).

Both give the batcher the same figures: the entries still live, their results, when the pass
started and how long it ran (for a stepped pass, its steps alone, the pauses between left out).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from batching.device import Device
from batching.dispatch import Dispatch
from batching.queue import Entry
from batching.steps import SteppedPass, Steps

ItemT = TypeVar("ItemT")
PreparedT = TypeVar("PreparedT")
ResultT = TypeVar("ResultT")

Run = tuple[list[Entry[ItemT, ResultT]], Sequence[ResultT], float, float]


class Passes(Generic[ItemT, PreparedT, ResultT]):
    """The batcher's forward passes.

    Args:
        prepare: collates items (on the device thread when a batch was not prepared ahead).
        run: the whole pass.
        run_steps: the pass as steps (None: the model cannot pause).
        device: the device thread.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        prepare: Callable[[Sequence[ItemT]], PreparedT],
        run: Callable[[PreparedT], Sequence[ResultT]],
        run_steps: Callable[[PreparedT], Steps[ResultT]] | None,
        device: Device,
        clock: Callable[[], float],
    ) -> None:
        self._prepare = prepare
        self._run = run
        self._run_steps = run_steps
        self._device = device
        self._clock = clock
        # When the latest step of a stepped pass ended, and how long it ran (device thread).
        self.step_ended_at = -math.inf
        self.step_s = 0.0

    @property
    def can_step(self) -> bool:
        return self._run_steps is not None

    def whole(
        self,
        batch: list[Entry[ItemT, ResultT]],
        prepared: PreparedT | None,
        dispatch: Dispatch,
    ) -> Run[ItemT, ResultT]:
        """Run the batch in one call; on the device thread."""
        if not dispatch.bulk and self.step_ended_at > dispatch.dispatched_at:
            # A step of a bulk pass ran after this batch was dispatched: it waited for it.
            dispatch.bulk_wait_s = self._clock() - dispatch.dispatched_at
        live = [e for e in batch if not e.dropped]
        if not live:
            return live, [], self._clock(), 0.0
        if prepared is None or len(live) != len(batch):
            prepared = self._prepare([e.item for e in live])
        started = self._clock()
        results = self._run(prepared)
        return live, results, started, self._clock() - started

    async def stepped(
        self,
        batch: list[Entry[ItemT, ResultT]],
        prepared: PreparedT | None,
        between: Callable[[], Awaitable[None]],
    ) -> Run[ItemT, ResultT]:
        """Run the batch a step per device call, awaiting `between` after each step. A pass
        whose callers all went away meanwhile is dropped at the next pause."""
        live = [e for e in batch if not e.dropped]
        run_steps = self._run_steps
        if not live or run_steps is None:
            return [], [], self._clock(), 0.0

        def begin() -> SteppedPass[ResultT]:
            ready = prepared if len(live) == len(batch) else None
            ready = self._prepare([e.item for e in live]) if ready is None else ready
            return SteppedPass(run_steps(ready), self._clock)

        steps = await self._device.call(begin)
        while not await self._device.call(self._advance, steps):
            await between()
            if all(e.dropped or e.future.done() for e in live):
                await self._device.call(steps.close)
                return [], [], self._clock(), 0.0
        assert steps.started is not None
        return live, steps.results, steps.started, steps.elapsed

    def _advance(self, steps: SteppedPass[ResultT]) -> bool:
        try:
            return steps.advance()
        finally:
            self.step_ended_at, self.step_s = steps.ended_at, steps.step_s
