from __future__ import annotations

import asyncio
import contextvars
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from batching import (
    BatchConfig,
    Batcher,
    BatcherClosedError,
    BatchObserver,
    BatchOutputError,
    BatchStats,
    DeadlineExceededError,
    DeviceFailedError,
    ItemTooLargeError,
    QueueFullError,
)


@dataclass
class Recorder(BatchObserver):
    batches: list[BatchStats] = field(default_factory=list)
    rejects: dict[str, int] = field(default_factory=dict)

    def on_batch(self, stats: BatchStats) -> None:
        self.batches.append(stats)

    def on_reject(self, reason: str, count: int) -> None:
        self.rejects[reason] = self.rejects.get(reason, 0) + count


@dataclass
class Device:
    """A batch function that records what it saw; `gate` holds a run until a test opens it."""

    seen: list[list[int]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    poison: int | None = None
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        self.gate.set()

    def prepare(self, items: Sequence[int]) -> list[int]:
        return list(items)

    def run(self, batch: list[int]) -> list[int]:
        self.seen.append(batch)
        self.entered.set()
        self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.poison is not None and self.poison in batch:
            raise RuntimeError("poisoned item")
        return [item * 2 for item in batch]


def make(
    device: Device, recorder: Recorder | None = None, **config: object
) -> Batcher[int, list[int], int]:
    return Batcher(
        device.prepare,
        device.run,
        BatchConfig(**config),  # type: ignore[arg-type]
        observer=recorder,
    )


@pytest.fixture
async def started() -> AsyncIterator[Callable[[Batcher[int, list[int], int]], None]]:
    batchers: list[Batcher[int, list[int], int]] = []

    def register(batcher: Batcher[int, list[int], int]) -> None:
        batchers.append(batcher)

    yield register
    for batcher in batchers:
        await batcher.stop()


async def wait_entered(device: Device) -> None:
    assert await asyncio.to_thread(device.entered.wait, 5)
    device.entered.clear()


async def test_queue_full_rejects_exactly_the_excess_quickly(started) -> None:
    device, recorder = Device(), Recorder()
    device.gate.clear()
    queue_max, extra = 8, 5
    batcher = make(device, recorder, queue_max=queue_max, max_size=64, window_s=0.0)
    started(batcher)
    await batcher.start()
    busy = asyncio.create_task(batcher.submit([1], [4]))
    await wait_entered(device)  # the model is busy with that item
    queued = [asyncio.create_task(batcher.submit([i], [4])) for i in range(queue_max)]
    await asyncio.sleep(0)
    assert batcher.queue_depth == queue_max
    rejections = 0
    for i in range(extra):
        started_at = time.monotonic()
        with pytest.raises(QueueFullError) as info:
            await batcher.submit([100 + i], [4])
        assert time.monotonic() - started_at < 0.05
        assert info.value.retry_after_s >= 1.0
        rejections += 1
    assert rejections == extra
    assert recorder.rejects == {"queue_full": extra}
    device.gate.set()
    assert await busy == [2]
    assert await asyncio.gather(*queued) == [[2 * i] for i in range(queue_max)]


async def test_results_return_to_the_right_caller_in_order(started) -> None:
    device = Device()
    batcher = make(device, max_size=32, max_tokens=4096, queue_max=20_000, window_s=0.002)
    started(batcher)
    await batcher.start()
    rng = random.Random(7)
    requests = []
    next_item = 0
    while next_item < 10_000:
        size = rng.randint(1, 8)
        items = list(range(next_item, min(next_item + size, 10_000)))
        next_item += len(items)
        requests.append(items)

    async def client(items: list[int]) -> None:
        await asyncio.sleep(rng.random() * 0.05)
        costs = [rng.randint(1, 128) for _ in items]
        assert await batcher.submit(items, costs) == [2 * i for i in items]

    await asyncio.gather(*(client(items) for items in requests))
    assert sorted(i for batch in device.seen for i in batch) == list(range(10_000))


async def test_bounds_hold_under_random_arrivals(started) -> None:
    rng = random.Random(3)
    for trial in range(5):
        max_size, max_tokens = rng.randint(1, 16), rng.randint(256, 2048)
        costs: dict[int, int] = {}
        device = Device(delay_s=0.001)
        batcher = make(
            device, max_size=max_size, max_tokens=max_tokens, window_s=rng.choice([0.0, 0.005])
        )
        started(batcher)
        await batcher.start()

        async def client(
            base: int,
            batcher: Batcher[int, list[int], int] = batcher,
            costs: dict[int, int] = costs,
        ) -> None:
            for k in range(10):
                await asyncio.sleep(rng.random() * 0.004)
                items = [base * 100 + k * 10 + j for j in range(rng.randint(1, 4))]
                for item in items:
                    costs[item] = rng.randint(1, 256)
                await batcher.submit(items, [costs[i] for i in items])

        await asyncio.gather(*(client(trial * 1000 + c) for c in range(12)))
        for batch in device.seen:
            assert len(batch) <= max_size
            assert len(batch) * max(costs[i] for i in batch) <= max_tokens


async def test_lone_request_skips_the_window_in_adaptive_mode(started) -> None:
    device, recorder = Device(), Recorder()
    batcher = make(device, recorder, window_s=0.2, adaptive=True)
    started(batcher)
    await batcher.start()
    for _ in range(3):
        started_at = time.monotonic()
        assert await batcher.submit([1], [4]) == [2]
        assert time.monotonic() - started_at < 0.05
    assert all(stats.wait_s < 0.05 for stats in recorder.batches)


async def test_lone_request_waits_the_window_in_fixed_mode(started) -> None:
    device, recorder = Device(), Recorder()
    batcher = make(device, recorder, window_s=0.05, adaptive=False)
    started(batcher)
    await batcher.start()
    started_at = time.monotonic()
    assert await batcher.submit([1], [4]) == [2]
    elapsed = time.monotonic() - started_at
    assert 0.05 <= elapsed < 0.2
    assert recorder.batches[0].wait_s >= 0.05


async def test_burst_of_max_size_goes_as_one_batch(started) -> None:
    device = Device()
    # The longest window: a full batch that waited for it would take a second.
    batcher = make(device, max_size=16, window_s=1.0, adaptive=False)
    started(batcher)
    await batcher.start()
    started_at = time.monotonic()
    results = await asyncio.gather(*(batcher.submit([i], [8]) for i in range(16)))
    assert time.monotonic() - started_at < 0.5  # full: no window wait
    assert results == [[2 * i] for i in range(16)]
    assert len(device.seen) == 1 and sorted(device.seen[0]) == list(range(16))


async def test_each_item_carries_the_tag_its_submitting_task_gave(started) -> None:
    # A tracer's observer reads the caller's context in `on_submit`; the batch reports it back
    # per item, with when the batch left the queue and when its forward pass began.
    caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="none")

    @dataclass
    class Tagger(Recorder):
        def on_submit(self) -> object:
            return caller.get()

    async def submit(name: str, items: list[int]) -> list[int]:
        caller.set(name)
        return await batcher.submit(items, [4] * len(items))

    device, recorder = Device(), Tagger()
    batcher = make(device, recorder, max_size=16, window_s=0.05, adaptive=False)
    started(batcher)
    await batcher.start()
    before = time.monotonic()
    await asyncio.gather(submit("a", [1, 2]), submit("b", [3]), submit("c", list(range(4, 17))))
    (stats,) = recorder.batches
    by_item = dict(zip(device.seen[0], stats.tags, strict=True))
    assert by_item == {1: "a", 2: "a", 3: "b"} | {i: "c" for i in range(4, 17)}
    assert before <= stats.dispatched_at <= stats.started_at <= time.monotonic()
    assert all(0 <= q <= stats.dispatched_at - before for q in stats.queue_s)


async def test_min_size_holds_until_twice_the_window(started) -> None:
    device = Device()
    batcher = make(device, max_size=8, min_size=4, window_s=0.03, adaptive=True)
    started(batcher)
    await batcher.start()
    started_at = time.monotonic()
    assert await batcher.submit([5], [4]) == [10]
    assert time.monotonic() - started_at >= 0.06


async def test_expired_item_never_reaches_the_model(started) -> None:
    device, recorder = Device(), Recorder()
    device.gate.clear()
    batcher = make(device, recorder, max_size=64, window_s=0.0)
    started(batcher)
    await batcher.start()
    busy = asyncio.create_task(batcher.submit([1], [4]))
    await wait_entered(device)
    with pytest.raises(DeadlineExceededError):
        await batcher.submit([99], [4], deadline=time.monotonic() + 0.05)
    device.gate.set()
    await busy
    assert await batcher.submit([3], [4]) == [6]
    assert all(99 not in batch for batch in device.seen)
    assert recorder.rejects == {"deadline": 1}


async def test_cancelled_caller_items_never_reach_the_model(started) -> None:
    device, recorder = Device(), Recorder()
    device.gate.clear()
    batcher = make(device, recorder, max_size=64, window_s=0.0)
    started(batcher)
    await batcher.start()
    busy = asyncio.create_task(batcher.submit([1], [4]))
    await wait_entered(device)
    gone = asyncio.create_task(batcher.submit([7, 8, 9], [4, 4, 4]))
    await asyncio.sleep(0)
    assert batcher.queue_depth == 3
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert batcher.queue_depth == 0
    device.gate.set()
    await busy
    assert await batcher.submit([3], [4]) == [6]
    assert all(not {7, 8, 9} & set(batch) for batch in device.seen)
    assert recorder.rejects == {"cancelled": 3}


async def test_items_already_running_are_not_counted_as_dropped(started) -> None:
    # `cancelled` and `deadline` count the items that never reached the model; a caller that
    # leaves while its batch runs got its items computed all the same.
    device, recorder = Device(), Recorder()
    device.gate.clear()
    batcher = make(device, recorder, max_size=64, window_s=0.0)
    started(batcher)
    await batcher.start()
    running = asyncio.create_task(batcher.submit([1, 2], [4, 4]))
    await wait_entered(device)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    device.gate.set()
    assert await batcher.submit([3], [4]) == [6]
    assert device.seen[0] == [1, 2]
    assert recorder.rejects == {}


async def test_poisoned_item_fails_alone(started) -> None:
    device = Device(poison=13)
    device.gate.clear()
    batcher = make(device, max_size=16, window_s=0.0)
    started(batcher)
    await batcher.start()
    first = asyncio.create_task(batcher.submit([0], [4]))
    await wait_entered(device)
    others = [asyncio.create_task(batcher.submit([i], [4])) for i in range(1, 16)]
    await asyncio.sleep(0)
    device.gate.set()
    await first
    results = await asyncio.gather(*others, return_exceptions=True)
    for i, result in zip(range(1, 16), results, strict=True):
        if i == 13:
            assert isinstance(result, RuntimeError)
        else:
            assert result == [2 * i]


async def test_oom_halves_the_token_budget(started) -> None:
    class OutOfMemory(RuntimeError):
        pass

    calls: list[int] = []

    def run(batch: list[int]) -> list[int]:
        calls.append(len(batch))
        if len(batch) > 2:
            raise OutOfMemory("out of memory")
        return batch

    batcher: Batcher[int, list[int], int] = Batcher(
        list,
        run,
        BatchConfig(max_size=8, max_tokens=1000, window_s=0.0),
        is_oom=lambda exc: isinstance(exc, OutOfMemory),
    )
    started(batcher)
    await batcher.start()
    results = await batcher.submit(list(range(8)), [100] * 8)
    assert results == list(range(8))
    assert batcher.token_budget() < 1000


async def test_oom_retry_runs_after_oom_on_the_device_thread_with_the_failed_pass_freed(
    started,
) -> None:
    class OutOfMemory(RuntimeError):
        pass

    class Activations:
        """What a forward pass holds in its frames while it runs."""

    events: list[str] = []
    threads: dict[str, int] = {}
    failed_passes: list[weakref.ref[Activations]] = []

    def run(batch: list[int]) -> list[int]:
        threads["run"] = threading.get_ident()
        activations = Activations()
        if len(batch) > 2:
            failed_passes.append(weakref.ref(activations))
            events.append(f"out of memory on {len(batch)}")
            raise OutOfMemory("out of memory")
        freed = all(ref() is None for ref in failed_passes)
        events.append(f"ran {len(batch)}, failed pass freed: {freed}")
        return batch

    def after_oom() -> None:
        threads["after_oom"] = threading.get_ident()
        events.append("after_oom")

    device_thread = ThreadPoolExecutor(1)
    batcher: Batcher[int, list[int], int] = Batcher(
        list,
        run,
        BatchConfig(max_size=4, window_s=0.0),
        is_oom=lambda exc: isinstance(exc, OutOfMemory),
        after_oom=after_oom,
        run_executor=device_thread,
    )
    started(batcher)
    await batcher.start()
    assert await batcher.submit([1, 2, 3, 4], [4] * 4) == [1, 2, 3, 4]
    assert events == [
        "out of memory on 4",
        "after_oom",
        "ran 2, failed pass freed: True",
        "ran 2, failed pass freed: True",
    ]
    assert threads["after_oom"] == threads["run"]
    device_thread.shutdown()


async def test_fatal_error_fails_everything_at_once(started) -> None:
    class DeviceLost(RuntimeError):
        pass

    entered, gate = threading.Event(), threading.Event()
    calls: list[int] = []

    def run(batch: list[int]) -> list[int]:
        calls.append(len(batch))
        entered.set()
        gate.wait(5)
        raise DeviceLost("CUDA error: an illegal memory access was encountered")

    batcher: Batcher[int, list[int], int] = Batcher(
        list,
        run,
        BatchConfig(max_size=4, window_s=0.0),
        is_fatal=lambda exc: isinstance(exc, DeviceLost),
    )
    started(batcher)
    await batcher.start()
    running = asyncio.create_task(batcher.submit([1, 2, 3, 4], [4] * 4))
    assert await asyncio.to_thread(entered.wait, 5)
    prepared = asyncio.create_task(batcher.submit([5, 6, 7, 8], [4] * 4))  # a full batch
    queued = asyncio.create_task(batcher.submit([9, 10], [4, 4]))
    await asyncio.sleep(0)
    gate.set()
    for task in (running, prepared, queued):
        with pytest.raises(DeviceFailedError) as info:
            await task
        assert isinstance(info.value.__cause__, DeviceLost)
    assert all(size == 4 for size in calls), "no halving on a dead device"
    assert isinstance(batcher.device_error, DeviceLost)
    started_at = time.monotonic()
    with pytest.raises(DeviceFailedError):
        await batcher.submit([11], [4])
    assert time.monotonic() - started_at < 0.05
    assert batcher.queue_depth == 0


async def test_running_for_s_tells_how_long_the_pass_has_run(started) -> None:
    device = Device()
    device.gate.clear()
    batcher = make(device, window_s=0.0)
    started(batcher)
    await batcher.start()
    assert batcher.running_for_s() is None
    busy = asyncio.create_task(batcher.submit([1], [4]))
    await wait_entered(device)
    running = batcher.running_for_s()
    assert running is not None and 0.0 <= running < 5.0
    later = batcher.running_for_s(now=time.monotonic() + 30.0)
    assert later is not None and later >= 30.0
    device.gate.set()
    assert await busy == [2]
    assert batcher.running_for_s() is None


async def test_wrong_result_count_is_an_error(started) -> None:
    batcher: Batcher[int, list[int], int] = Batcher(
        list, lambda batch: batch[:-1], BatchConfig(window_s=0.0)
    )
    started(batcher)
    await batcher.start()
    with pytest.raises(BatchOutputError):
        await batcher.submit([1, 2], [4, 4])


async def test_oversized_item_is_refused(started) -> None:
    batcher = make(Device(), max_tokens=64)
    started(batcher)
    await batcher.start()
    with pytest.raises(ItemTooLargeError):
        await batcher.submit([1], [65])


async def test_next_batch_is_prepared_while_one_runs(started) -> None:
    device = Device()
    device.gate.clear()
    prepared_while_running = threading.Event()

    def prepare(items: Sequence[int]) -> list[int]:
        if device.entered.is_set():
            prepared_while_running.set()
        return list(items)

    batcher: Batcher[int, list[int], int] = Batcher(
        prepare, device.run, BatchConfig(max_size=2, window_s=0.0)
    )
    started(batcher)
    await batcher.start()
    first = asyncio.create_task(batcher.submit([1, 2], [4, 4]))
    assert await asyncio.to_thread(device.entered.wait, 5)
    second = asyncio.create_task(batcher.submit([3, 4], [4, 4]))
    assert await asyncio.to_thread(prepared_while_running.wait, 5)
    assert len(device.seen) == 1  # one forward pass at a time
    device.gate.set()
    assert await first == [2, 4]
    assert await second == [6, 8]


async def test_oldest_item_goes_in_the_next_batch(started) -> None:
    device = Device()
    device.gate.clear()
    batcher = make(device, max_size=2, window_s=0.01, adaptive=False)
    started(batcher)
    await batcher.start()
    first = asyncio.create_task(batcher.submit([0], [4]))
    await wait_entered(device)
    long_item = asyncio.create_task(batcher.submit([1000], [200]))
    await asyncio.sleep(0)
    shorts = [asyncio.create_task(batcher.submit([i], [4])) for i in range(1, 40)]
    await asyncio.sleep(0.03)
    device.gate.set()
    await asyncio.gather(first, long_item, *shorts)
    # The long item is the oldest queued one: the batch after the running one takes it.
    assert 1000 in device.seen[1]


async def run_costed_rounds(
    started: Callable[[Batcher[int, list[int], int]], None],
    *,
    fixed_s: float,
    per_token_s: float,
    rounds: int,
    per_round: int,
    seed: int,
) -> tuple[list[list[int]], dict[int, int]]:
    """Bursts of 8- and 200-token items through a device whose batches take `fixed_s` +
    `per_token_s` x padded tokens; returns the batches it ran and each item's cost."""
    costs: dict[int, int] = {}
    seen: list[list[int]] = []

    def run(batch: list[int]) -> list[int]:
        padded = len(batch) * max(costs[item] for item in batch)
        time.sleep(fixed_s + per_token_s * padded)
        seen.append(batch)
        return batch

    batcher: Batcher[int, list[int], int] = Batcher(
        lambda items: list(items), run, BatchConfig(max_size=16, window_s=0.0, adaptive=False)
    )
    started(batcher)
    await batcher.start()
    rng = random.Random(seed)
    for round_ in range(rounds):
        items = list(range(round_ * per_round, (round_ + 1) * per_round))
        for item in items:
            costs[item] = rng.choice((8, 200))
        await asyncio.gather(*(batcher.submit([item], [costs[item]]) for item in items))
    return seen, costs


async def test_measured_batch_cost_keeps_lengths_apart(started) -> None:
    """A device whose batches cost about their padded tokens: mixing lengths stops paying."""
    seen, costs = await run_costed_rounds(
        # a fixed cost worth 25 padded tokens
        started,
        fixed_s=0.0005,
        per_token_s=0.00002,
        rounds=30,
        per_round=24,
        seed=3,
    )
    late = seen[-20:]
    mixed = [b for b in late if len({costs[item] for item in b}) > 1]
    assert not mixed, f"batches mixing 8- and 200-token items: {mixed}"
    assert max(len(b) for b in late) > 1


async def test_large_fixed_batch_cost_fills_batches(started) -> None:
    """A GPU-like device (launches dominate, tokens nearly free): mixed lengths share batches."""
    seen, costs = await run_costed_rounds(
        started, fixed_s=0.004, per_token_s=0.0000001, rounds=20, per_round=32, seed=4
    )
    late = seen[-10:]
    assert sum(len(b) for b in late) / len(late) >= 12
    assert any(len({costs[item] for item in b}) > 1 for b in late)


async def test_cold_start_fills_batches_greedily(started) -> None:
    """Before the batch cost is known, a batch fills to the bounds, least padding first."""
    device = Device()
    batcher = make(device, max_size=16, window_s=0.0, adaptive=False)
    started(batcher)
    await batcher.start()
    costs = [8 + 3 * i for i in range(16)]  # no two lengths alike
    assert await batcher.submit(list(range(16)), costs) == [2 * i for i in range(16)]
    assert len(device.seen) == 1 and batcher.batch_overhead_tokens is None


async def test_cold_start_keeps_padding_under_the_cap(started) -> None:
    device = Device()
    batcher = make(device, max_size=16, window_s=0.0, adaptive=False, max_padding=0.5)
    started(batcher)
    await batcher.start()
    costs = [8, 200] * 8
    await batcher.submit(list(range(16)), costs)
    assert sorted(sorted(costs[i] for i in batch) for batch in device.seen) == [
        [8] * 8,
        [200] * 8,
    ]


def seeded_device(
    cost_s: Callable[[int], float], costs: dict[int, int], seen: list[list[int]]
) -> Callable[[list[int]], list[int]]:
    """A batch function that sleeps `cost_s(padded tokens)` and records its batches."""

    def run(batch: list[int]) -> list[int]:
        time.sleep(cost_s(len(batch) * max(costs[item] for item in batch)))
        seen.append(batch)
        return batch

    return run


def warm_up(cost_s: Callable[[int], float]) -> list[tuple[int, float]]:
    """Warm-up-like timings: two passes at each of six sizes up to a full batch, 3% jitter."""
    rng = random.Random(1)
    sizes = (16, 64, 256, 1024, 4096, 16384)
    return [(size, cost_s(size) * rng.uniform(0.97, 1.03)) for size in sizes for _ in range(2)]


async def test_seeded_cpu_like_device_keeps_lengths_apart_from_the_first_batch(started) -> None:
    costs: dict[int, int] = {}
    seen: list[list[int]] = []

    def cpu_like(padded: int) -> float:
        return 0.001 + 0.00002 * padded  # a fixed cost worth 50 padded tokens

    batcher: Batcher[int, list[int], int] = Batcher(
        list, seeded_device(cpu_like, costs, seen), BatchConfig(max_size=32, window_s=0.0)
    )
    batcher.seed_costs(warm_up(cpu_like))
    overhead, knee = batcher.batch_overhead_tokens, batcher.batch_knee_tokens
    assert overhead is not None and 40 <= overhead <= 60 and knee == 0.0
    started(batcher)
    await batcher.start()
    items = list(range(32))
    costs.update({item: (8, 200)[item % 2] for item in items})
    await batcher.submit(items, [costs[item] for item in items])
    assert all(len({costs[item] for item in batch}) == 1 for batch in seen), seen


@pytest.mark.parametrize("max_size", [32, 256, 1024])
async def test_seeded_gpu_like_device_fills_batches_from_the_first(started, max_size) -> None:
    """A pass costs a 10 ms floor up to a knee of 8000 padded tokens, then 1 us a token: seeded
    with warm-up timings, the batcher fills every batch to `max_size` from the first one."""
    max_tokens = 16384
    costs: dict[int, int] = {}
    seen: list[list[int]] = []

    def gpu_like(padded: int) -> float:
        return max(0.010, 0.002 + 1e-6 * padded)

    batcher: Batcher[int, list[int], int] = Batcher(
        list,
        seeded_device(gpu_like, costs, seen),
        BatchConfig(max_size=max_size, max_tokens=max_tokens, window_s=0.0, queue_max=4096),
    )
    batcher.seed_costs(warm_up(gpu_like))
    knee = batcher.batch_knee_tokens
    assert knee is not None and 4096 <= knee <= 8192
    started(batcher)
    await batcher.start()
    rng = random.Random(max_size)
    items = list(range(3 * max_size))
    # Lengths vary over all that a full batch can hold, so only the size bound stops a batch.
    costs.update({item: rng.randint(1, max_tokens // max_size) for item in items})
    assert await batcher.submit(items, [costs[item] for item in items]) == items
    assert [len(batch) for batch in seen] == [max_size] * 3
    assert all(len({costs[item] for item in batch}) > 1 for batch in seen)


async def test_stop_fails_queued_items(started) -> None:
    device = Device()
    device.gate.clear()
    batcher = make(device, max_size=64, window_s=0.0)
    await batcher.start()
    busy = asyncio.create_task(batcher.submit([1], [4]))
    await wait_entered(device)
    queued = asyncio.create_task(batcher.submit([2], [4]))
    await asyncio.sleep(0)
    await batcher.stop()
    with pytest.raises(BatcherClosedError):
        await queued
    device.gate.set()
    busy.cancel()
    await asyncio.gather(busy, return_exceptions=True)


async def test_submit_after_stop_is_refused(started) -> None:
    batcher = make(Device(), window_s=0.0)
    await batcher.start()
    assert await batcher.submit([1], [4]) == [2]
    await batcher.stop()
    with pytest.raises(BatcherClosedError):
        await batcher.submit([2], [4])


def test_public_surface_is_what_the_serving_layer_uses() -> None:
    public = {name for name in dir(Batcher) if not name.startswith("_")}
    assert public == {
        "batch_knee_tokens",
        "batch_overhead_tokens",
        "bulk_depth",
        "device_error",
        "queue_depth",
        "running_for_s",
        "seed_costs",
        "start",
        "stop",
        "submit",
        "token_budget",
    }
