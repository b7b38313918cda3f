"""The bulk lane: job items run only in capacity interactive items leave (batching.lanes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from batching import BatchConfig, BatchCost, Batcher
from batching.lanes import UNFITTED_TOKENS, BulkLane
from batching.queue import Entry
from tests.batching.test_batcher import (
    Device,
    Recorder,
    make,
    seeded_device,
    wait_entered,
    warm_up,
)
from tests.batching.test_batcher import started as started  # the fixture


@dataclass
class WaitRecorder(Recorder):
    waits: list[float] = field(default_factory=list)

    def on_interactive_wait(self, seconds: float) -> None:
        self.waits.append(seconds)


async def test_bulk_items_wait_while_an_interactive_item_is_queued(started) -> None:
    device = Device()
    device.gate.clear()
    batcher = make(device, max_size=4, window_s=0.0)
    started(batcher)
    await batcher.start()
    first = asyncio.create_task(batcher.submit([1], [4]))
    await wait_entered(device)  # the device is busy
    bulk = asyncio.create_task(batcher.submit([100, 101], [4, 4], bulk=True))
    await asyncio.sleep(0.01)
    interactive = asyncio.create_task(batcher.submit([2, 3], [4, 4]))
    await asyncio.sleep(0.01)
    assert batcher.bulk_depth == 2
    device.gate.set()
    assert await interactive == [4, 6]
    assert await bulk == [200, 202]
    assert await first == [2]
    # The interactive items, queued after the bulk ones, ran first.
    assert device.seen == [[1], [2, 3], [100, 101]]


async def test_bulk_batches_are_small_and_need_no_admission(started) -> None:
    device, recorder = Device(), Recorder()
    batcher = make(device, recorder, max_size=64, queue_max=4, window_s=0.0)
    started(batcher)
    await batcher.start()
    results = await batcher.submit(list(range(100)), [64] * 100, bulk=True)
    assert results == [2 * i for i in range(100)]
    assert all(stats.bulk for stats in recorder.batches)
    # Cost unknown: a bulk batch holds UNFITTED_TOKENS padded tokens at most.
    assert max(len(batch) for batch in device.seen) == UNFITTED_TOKENS // 64
    assert batcher.queue_depth == 0 and batcher.bulk_depth == 0


async def test_a_bulk_batch_delays_an_arriving_interactive_item_by_itself_alone(started) -> None:
    device, recorder = Device(), WaitRecorder()
    device.gate.clear()
    batcher = make(device, recorder, max_size=4, window_s=0.0)
    started(batcher)
    await batcher.start()
    bulk = asyncio.create_task(batcher.submit(list(range(100, 112)), [4] * 12, bulk=True))
    await wait_entered(device)  # a bulk batch runs
    interactive = asyncio.create_task(batcher.submit([1], [4]))
    await asyncio.sleep(0.02)
    device.gate.set()
    assert await interactive == [2]
    await bulk
    # The interactive item went right after the bulk batch that was running, before the rest.
    assert device.seen[1] == [1]
    assert len(recorder.waits) == 1 and recorder.waits[0] >= 0.015


async def test_the_starvation_guard_moves_bulk_items_under_constant_interactive_load(
    started,
) -> None:
    device = Device(delay_s=0.005)
    batcher = make(device, max_size=2, window_s=0.0, bulk_guard_s=0.05)
    started(batcher)
    await batcher.start()
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            await batcher.submit([1, 1], [4, 4])

    loaders = [asyncio.create_task(load()) for _ in range(4)]  # the queue is never empty
    await asyncio.sleep(0.05)
    began = time.monotonic()
    assert await batcher.submit([7, 8, 9], [4, 4, 4], bulk=True) == [14, 16, 18]
    elapsed = time.monotonic() - began
    stop.set()
    await asyncio.gather(*loaders)
    # Two bulk batches of 2 and 1 items, each after at most a guard interval and a pass or two.
    assert elapsed < 1.0


async def test_a_cancelled_bulk_submission_leaves_the_lane(started) -> None:
    device = Device()
    device.gate.clear()
    batcher = make(device, max_size=4, window_s=0.0)
    started(batcher)
    await batcher.start()
    busy = asyncio.create_task(batcher.submit([1], [4]))
    await wait_entered(device)
    bulk = asyncio.create_task(batcher.submit([5, 6], [4, 4], bulk=True))
    await asyncio.sleep(0.01)
    assert batcher.bulk_depth == 2
    bulk.cancel()
    await asyncio.gather(bulk, return_exceptions=True)
    assert batcher.bulk_depth == 0
    device.gate.set()
    assert await busy == [2]
    await asyncio.sleep(0.02)
    assert device.seen == [[1]]  # the cancelled bulk items never ran


def test_the_bulk_budget_follows_the_measured_cost() -> None:
    lane: BulkLane[int, int] = BulkLane(guard_s=1.0, floors=1.0, clock=time.monotonic)
    cost = BatchCost()
    assert lane.token_budget(cost, 16384) == UNFITTED_TOKENS
    # A CPU-like device: 2 ms a batch plus 0.05 ms a padded token.
    cost.seed((tokens, 0.002 + 0.00005 * tokens) for tokens in (16, 64, 256, 1024, 4096) * 2)
    assert cost.fitted
    budget = lane.token_budget(cost, 16384)
    assert abs(budget - 40) <= 4  # knee 0 + one floor (40 tokens' worth)
    assert lane.token_budget(cost, 16) == 16  # never past the batch bound


def test_the_bulk_budget_grows_to_a_typical_interactive_batch() -> None:
    lane: BulkLane[int, int] = BulkLane(guard_s=1.0, floors=1.0, clock=time.monotonic)
    cost = BatchCost()
    cost.seed((tokens, 0.002 + 0.00005 * tokens) for tokens in (16, 64, 256, 1024, 4096) * 2)
    for _ in range(100):
        lane.observe_interactive(320)  # interactive batches of ten 32-token items
    assert 300 <= lane.token_budget(cost, 16384) <= 320


def riders_batcher(
    cost_s: Callable[[int], float], costs: dict[int, int], seen: list[list[int]], **config: float
) -> Batcher[int, list[int], int]:
    batcher: Batcher[int, list[int], int] = Batcher(
        list, seeded_device(cost_s, costs, seen), BatchConfig(max_size=32, window_s=0.0, **config)
    )
    batcher.seed_costs(warm_up(cost_s))
    return batcher


@pytest.mark.parametrize(("share", "first"), [(0.02, list(range(32))), (0.0, [0])])
async def test_bulk_items_ride_in_an_interactive_batchs_free_rows_on_a_gpu(
    started, share: float, first: list[int]
) -> None:
    costs = {item: 10 for item in range(100)}
    seen: list[list[int]] = []

    def gpu_like(padded: int) -> float:
        return max(0.010, 0.002 + 1e-6 * padded)

    batcher = riders_batcher(gpu_like, costs, seen, bulk_rider_share=share)
    started(batcher)
    await batcher.start()
    interactive, bulk = await asyncio.gather(
        batcher.submit([0], [10]), batcher.submit(list(range(1, 100)), [10] * 99, bulk=True)
    )
    assert interactive == [0] and bulk == list(range(1, 100))
    # Below the knee a row costs nothing: the interactive batch went full, 31 bulk items in it
    # (a share of 0 turns riding off).
    assert seen[0] == first
    with pytest.raises(ValueError, match="bulk_rider_share"):
        BatchConfig(bulk_rider_share=1.5)


async def test_no_bulk_item_rides_in_a_small_interactive_batch_on_a_cpu(started) -> None:
    costs = {item: 10 for item in range(100)}
    seen: list[list[int]] = []
    batcher = riders_batcher(lambda padded: 0.001 + 0.00002 * padded, costs, seen)
    started(batcher)
    await batcher.start()
    await asyncio.gather(
        batcher.submit([0], [10]), batcher.submit(list(range(1, 100)), [10] * 99, bulk=True)
    )
    assert seen[0] == [0]  # every row costs: the interactive item went alone, first


def test_riders_add_at_most_their_share_of_a_batchs_time() -> None:
    lane: BulkLane[int, int] = BulkLane(guard_s=1.0, floors=1.0, clock=time.monotonic)
    cost = BatchCost()  # CPU-like: a 50-token floor, every token beyond it costs
    cost.seed((tokens, 0.001 + 0.00002 * tokens) for tokens in (16, 64, 256, 1024, 4096) * 2)
    loop = asyncio.new_event_loop()
    entries = [Entry(i, 10, 10, None, 0.0, loop.create_future(), i, None) for i in range(200)]
    lane.queue.add(entries[100:])
    config = BatchConfig(max_size=256, max_tokens=16384)
    riders = lane.riders(entries[:100], cost, config, 16384, 0.0)
    # 100 items of 10 tokens: 1 000 padded tokens and a floor of 50: 2% is 21 tokens, two rows.
    assert [e.item for e in riders] == [100, 101]
    assert len(lane.queue) == 98 and all(e.taken for e in riders)
    loop.close()
