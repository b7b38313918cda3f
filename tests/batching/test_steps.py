"""Stepped bulk passes (`batching.steps`, `batching.passes`): a job's batch runs a step per
device call, and interactive batches run at its pauses instead of after the whole pass."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import pytest

from batching import BatchConfig, BatchCost, Batcher
from batching.lanes import BulkLane
from tests.batching.test_batcher import started as started  # the fixture
from tests.batching.test_lanes import WaitRecorder

STEPS = 4


@dataclass
class SteppedDevice:
    """Interactive batches run whole, bulk ones a step at a time; `log` is what ran, in order:
    ("run", batch) or ("step", index, batch) or ("closed", batch)."""

    step_s: float = 0.0
    log: list[tuple[object, ...]] = field(default_factory=list)
    first_step: threading.Event = field(default_factory=threading.Event)

    def prepare(self, items: Sequence[int]) -> list[int]:
        return list(items)

    def run(self, batch: list[int]) -> list[int]:
        self.log.append(("run", batch))
        time.sleep(self.step_s)
        return [2 * x for x in batch]

    def run_steps(self, batch: list[int]) -> Generator[None, None, list[int]]:
        try:
            for index in range(STEPS):
                if index:
                    yield
                self.log.append(("step", index, batch))
                self.first_step.set()
                time.sleep(self.step_s)
            return [2 * x for x in batch]
        finally:
            if len([e for e in self.log if e[0] == "step" and e[2] == batch]) < STEPS:
                self.log.append(("closed", batch))

    def steps_of(self, batch: list[int]) -> list[int]:
        return [e[1] for e in self.log if e[0] == "step" and e[2] == batch]  # type: ignore[misc]


def make(device: SteppedDevice, recorder: WaitRecorder | None = None, **config: object) -> Batcher:
    return Batcher(
        device.prepare,
        device.run,
        BatchConfig(**config),  # type: ignore[arg-type]
        observer=recorder,
        run_steps=device.run_steps,
        steps=STEPS,
    )


async def first_step(device: SteppedDevice) -> None:
    assert await asyncio.to_thread(device.first_step.wait, 5)


async def test_a_bulk_batch_runs_a_step_per_call_and_gives_the_whole_results(started) -> None:
    device = SteppedDevice()
    batcher = make(device, max_size=64, window_s=0.0)
    started(batcher)
    await batcher.start()
    assert await batcher.submit(list(range(10)), [4] * 10, bulk=True) == [2 * i for i in range(10)]
    bulk_batches = {tuple(e[2]) for e in device.log if e[0] == "step"}  # type: ignore[arg-type]
    assert bulk_batches and not [e for e in device.log if e[0] == "run"]
    for batch in bulk_batches:
        assert device.steps_of(list(batch)) == list(range(STEPS))
    # Interactive items still run whole.
    assert await batcher.submit([7], [4]) == [14]
    assert device.log[-1] == ("run", [7])


async def test_an_interactive_batch_runs_at_the_next_pause_of_a_bulk_pass(started) -> None:
    device, recorder = SteppedDevice(step_s=0.03), WaitRecorder()
    batcher = make(device, recorder, max_size=4, window_s=0.0)
    started(batcher)
    await batcher.start()
    bulk = asyncio.create_task(batcher.submit([100, 101], [4, 4], bulk=True))
    await first_step(device)  # step 0 of the bulk pass runs
    assert await batcher.submit([1], [4]) == [2]
    assert not bulk.done()  # the interactive item did not wait for the whole pass
    assert await bulk == [200, 202]
    kinds = [e[0] if e[0] == "run" else e[1] for e in device.log]
    assert kinds.index("run") < kinds.index(STEPS - 1)  # it ran between two steps
    # What the step cost it is measured (the order above shows it was one step, not four).
    assert len(recorder.waits) == 1 and recorder.waits[0] > 0


async def test_a_paused_bulk_pass_goes_on_by_the_guard_under_constant_load(started) -> None:
    device = SteppedDevice(step_s=0.005)
    batcher = make(device, max_size=1, window_s=0.0, bulk_guard_s=0.05)
    started(batcher)
    await batcher.start()
    stop = asyncio.Event()

    async def constant_load() -> int:
        count = 0
        while not stop.is_set():  # always an interactive item queued or running
            await asyncio.gather(*(batcher.submit([i], [4]) for i in range(4)))
            count += 4
        return count

    load = asyncio.create_task(constant_load())
    await asyncio.sleep(0.02)
    async with asyncio.timeout(5):
        assert await batcher.submit([100], [4], bulk=True) == [200]
    stop.set()
    assert await load > 0
    assert device.steps_of([100]) == list(range(STEPS))


async def test_a_bulk_pass_whose_items_went_away_stops_at_the_next_pause(started) -> None:
    device = SteppedDevice(step_s=0.05)
    batcher = make(device, max_size=4, window_s=0.0)
    started(batcher)
    await batcher.start()
    bulk = asyncio.create_task(batcher.submit([100, 101], [4, 4], bulk=True))
    await first_step(device)
    bulk.cancel()  # a job's cancel withdraws its items
    with pytest.raises(asyncio.CancelledError):
        await bulk
    await asyncio.sleep(0.2)
    assert len(device.steps_of([100, 101])) < STEPS
    assert ("closed", [100, 101]) in device.log
    assert await batcher.submit([1], [4]) == [2]  # the device is free again


def test_a_stepped_lane_holds_half_steps_times_the_tokens_of_one_short_pass() -> None:
    cost = BatchCost()
    cost.seed([(16, 0.010), (64, 0.016), (256, 0.040), (1024, 0.136)])
    whole = BulkLane(0.5, 1.0, time.monotonic)
    stepped = BulkLane(0.5, 1.0, time.monotonic, steps=STEPS)
    assert stepped.token_budget(cost, 100_000) == pytest.approx(
        STEPS / 2 * whole.token_budget(cost, 100_000), abs=STEPS
    )
    assert stepped.token_budget(cost, 300) <= 300  # never past the batch bound


def test_a_paused_pass_steps_only_where_it_delays_no_interactive_batch() -> None:
    now = 100.0
    lane = BulkLane(0.5, 1.0, lambda: now, steps=STEPS)
    lane.started(now)
    step_s, last = 0.01, now
    assert lane.may_step(now, 0, None, last, step_s)  # nothing interactive
    assert not lane.may_step(now, 1, None, last, step_s)  # an interactive batch in flight
    assert not lane.may_step(now, 0, now + 0.005, last, step_s)  # a batch due mid-step
    assert lane.may_step(now, 0, now + 0.05, last, step_s)  # its window ends after the step
    assert lane.may_step(now + 0.6, 1, None, last, step_s)  # the starvation guard...
    assert lane.may_step(now + 0.6, 1, None, now + 0.6, step_s)  # ... runs the pass to its end
    lane.started(now + 1)
    assert not lane.may_step(now + 1, 1, None, now + 1, step_s)  # the next pass pauses again
