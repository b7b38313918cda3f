"""The iteration-level scheduler: decode first, chunked prefill under the budget, slots,
refusal when the waiting queue is full, aborts and deadlines at the next plan."""

from __future__ import annotations

import pytest

from batching import QueueFullError, Scheduler, Sequence


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(scheduler: Scheduler, token: int = 7) -> list[tuple[int, int, int, bool]]:
    """Plan a step, 'run' it (each sampling chunk gets `token`); (slot, start, size, samples)."""
    plan = scheduler.schedule()
    for chunk in plan.chunks:
        scheduler.advance(chunk, token if chunk.samples else None)
    return [(c.sequence.slot or 0, c.start, len(c.tokens), c.samples) for c in plan.chunks]


def test_decode_tokens_come_first_and_prompts_are_chunked_under_the_budget() -> None:
    scheduler = Scheduler(num_slots=4, max_batch_tokens=8, max_waiting=10)
    a, b = Sequence(list(range(5)), 10), Sequence(list(range(12)), 10)
    scheduler.add(a)
    scheduler.add(b)
    assert run(scheduler) == [(0, 0, 5, True), (1, 0, 3, False)]
    # a decodes one token; b's prompt goes on in the budget left.
    assert run(scheduler) == [(0, 5, 1, True), (1, 3, 7, False)]
    assert run(scheduler) == [(0, 6, 1, True), (1, 10, 2, True)]
    assert run(scheduler) == [(0, 7, 1, True), (1, 12, 1, True)]
    assert a.output == [7, 7, 7, 7] and a.token_range(4, 7) == [4, 7, 7]


def test_a_sequence_joins_when_a_slot_frees_and_leaves_at_once() -> None:
    scheduler = Scheduler(num_slots=1, max_batch_tokens=64, max_waiting=10)
    a, b = Sequence([1, 2], 2), Sequence([3, 4, 5], 2)
    scheduler.add(a)
    scheduler.add(b)
    assert run(scheduler) == [(0, 0, 2, True)]  # b waits: the cache is full
    assert scheduler.queue_depth == 1 and scheduler.slot_usage == 1.0
    scheduler.finish(a)
    assert run(scheduler) == [(0, 0, 3, True)]  # b takes the freed slot in the next step


def test_the_waiting_queue_refuses_past_its_bound_with_a_retry_hint() -> None:
    scheduler = Scheduler(num_slots=1, max_batch_tokens=64, max_waiting=2)
    for _ in range(2):
        scheduler.add(Sequence([1], 1))
    with pytest.raises(QueueFullError) as caught:
        scheduler.add(Sequence([1], 1))
    assert caught.value.retry_after_s >= 1


def test_aborted_and_expired_sequences_leave_at_the_next_plan() -> None:
    clock = Clock()
    scheduler = Scheduler(num_slots=2, max_batch_tokens=64, max_waiting=10, clock=clock)
    a, b, c = Sequence([1, 2], 5), Sequence([3], 5, deadline=1.0), Sequence([4], 5)
    for sequence in (a, b, c):
        scheduler.add(sequence)
    run(scheduler)
    assert scheduler.abort(a) and not scheduler.abort(a)
    clock.now = 2.0
    plan = scheduler.schedule()
    assert plan.expired == [b]
    assert [chunk.sequence for chunk in plan.chunks] == [c]  # c got a slot at once
    assert not scheduler.waiting and scheduler.running == [c]
