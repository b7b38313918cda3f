"""A forward pass run in steps: one device call per step, so other passes can run between them.

A model whose pass can pause (a transformer encoder between its layers) gives the batcher a
generator that yields between steps and returns the batch's results. The batcher runs a bulk
(job) batch this way: an interactive batch that arrives meanwhile runs at the next pause, after
one step instead of the whole pass (`batching.lanes`).

    steps = SteppedPass(run_steps(prepared), clock)
    while not await device.call(steps.advance):   # each call on the device thread
        ...                                       # pause here while interactive work runs
    steps.results, steps.started, steps.elapsed
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from typing import Generic, TypeVar

ResultT = TypeVar("ResultT")

Steps = Generator[None, None, Sequence[ResultT]]


class SteppedPass(Generic[ResultT]):
    """One pass, advanced a step at a time on the device thread.

    Args:
        steps: yields between steps, returns one result per item.
        clock: monotonic seconds.

    Attributes:
        started: when the first step began (None before it).
        elapsed: the seconds its steps ran, the pauses between them left out: the pass's cost.
        ended_at: when the latest step ended (-inf before the first).
        step_s: how long the latest step ran.
    """

    def __init__(self, steps: Steps[ResultT], clock: Callable[[], float]) -> None:
        self._steps = steps
        self._clock = clock
        self.started: float | None = None
        self.elapsed = 0.0
        self.ended_at = -math.inf
        self.step_s = 0.0
        self._results: Sequence[ResultT] | None = None

    def advance(self) -> bool:
        """Run the next step (on the device thread); True once the pass is done."""
        began = self._clock()
        if self.started is None:
            self.started = began
        try:
            next(self._steps)
        except StopIteration as done:
            self._results = done.value
            return True
        finally:
            self.ended_at = self._clock()
            self.step_s = self.ended_at - began
            self.elapsed += self.step_s
        return False

    @property
    def results(self) -> Sequence[ResultT]:
        """The pass's results, once `advance` returned True."""
        if self._results is None:
            raise RuntimeError("the pass has not finished")
        return self._results

    def close(self) -> None:
        """Drop a pass that will not finish (its items went away): it holds device memory."""
        self._steps.close()
