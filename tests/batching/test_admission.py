"""Admission: the queue's bound, and the deadline's reach at the measured drain rate."""

from __future__ import annotations

import asyncio
import time

import pytest

from batching import QueueFullError
from batching.admission import Admission
from tests.batching.test_batcher import Device, Recorder, make, started

__all__ = ["started"]  # the fixture, shared with the batcher's tests


def test_the_queue_bound_refuses_the_excess_with_a_retry_hint() -> None:
    admission = Admission(queue_max=10)
    admission.check(queued=6, incoming=4, now=0.0, deadline=None)
    admission.observe(size=5, elapsed_s=1.0)  # 5 items/s
    with pytest.raises(QueueFullError) as info:
        admission.check(queued=6, incoming=9, now=0.0, deadline=None)
    assert info.value.retry_after_s == 1.0  # 5 items over at 5 items/s


def test_a_request_the_queue_would_hold_past_its_deadline_is_refused() -> None:
    admission = Admission(queue_max=1000)
    admission.check(queued=500, incoming=1, now=0.0, deadline=0.1)  # no rate known: admitted
    admission.observe(size=10, elapsed_s=1.0)  # 10 items/s: 50 items ahead take 5 s
    admission.check(queued=49, incoming=1, now=0.0, deadline=5.01)
    with pytest.raises(QueueFullError, match="past the request's deadline") as info:
        admission.check(queued=49, incoming=1, now=0.0, deadline=4.9)
    assert info.value.retry_after_s == pytest.approx(5.0)
    admission.check(queued=49, incoming=1, now=0.0, deadline=None)  # no deadline: no reach


def test_the_drain_rate_follows_the_batches() -> None:
    admission = Admission(queue_max=10)
    for _ in range(30):
        admission.observe(size=8, elapsed_s=0.5)
    assert admission.drain_per_s == pytest.approx(16.0, rel=1e-3)


def test_the_drain_rate_of_mixed_batches_is_what_they_drain_together() -> None:
    # Length grouping alternates 32 short items in 0.1 s with 4 long ones in 0.5 s: together
    # 36 items in 0.6 s (60/s), where the mean of the two rates (164/s) would admit requests
    # that then wait past their deadlines.
    admission = Admission(queue_max=10)
    for _ in range(40):
        admission.observe(size=32, elapsed_s=0.1)
        admission.observe(size=4, elapsed_s=0.5)
    assert 40 < admission.drain_per_s < 90


async def test_the_batcher_sheds_what_it_cannot_serve_in_time(started) -> None:
    # 20 ms a batch of one: a queue of 30 takes about 0.6 s. A request with 0.2 s left is
    # refused at once with 429's error instead of waiting for its 504.
    device, recorder = Device(delay_s=0.02), Recorder()
    batcher = make(device, recorder, max_size=1, window_s=0.0)
    started(batcher)
    await batcher.start()
    await batcher.submit([1], [4])  # a batch ran: the drain rate is known
    queued = [asyncio.create_task(batcher.submit([i], [4])) for i in range(30)]
    await asyncio.sleep(0)
    started_at = time.monotonic()
    with pytest.raises(QueueFullError, match="deadline"):
        await batcher.submit([99], [4], deadline=time.monotonic() + 0.2)
    assert time.monotonic() - started_at < 0.1  # at once, not at the deadline
    assert await batcher.submit([98], [4], deadline=time.monotonic() + 30) == [196]
    assert sorted(r[0] for r in await asyncio.gather(*queued)) == [2 * i for i in range(30)]
    assert all(99 not in batch for batch in device.seen)
    assert recorder.rejects == {"queue_full": 1}
