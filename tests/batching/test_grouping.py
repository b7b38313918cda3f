from __future__ import annotations

import itertools
import math
import random
import time

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from batching import select_batch
from batching.grouping import SPLIT_CANDIDATES

overheads = st.one_of(st.just(math.inf), st.floats(0.0, 20_000.0))


def padding_share(costs: list[int], indices: tuple[int, ...]) -> float:
    padded = len(indices) * max(costs[i] for i in indices)
    return 1 - sum(costs[i] for i in indices) / padded


@settings(max_examples=400, deadline=None)
@given(
    costs=st.lists(st.integers(1, 512), min_size=1, max_size=200),
    max_size=st.integers(1, 64),
    max_tokens=st.integers(512, 16384),
    max_padding=st.floats(0.0, 1.0),
    batch_overhead=overheads,
    batch_knee=st.floats(0.0, 20_000.0),
)
def test_selection_keeps_every_bound_and_takes_the_oldest(
    costs: list[int],
    max_size: int,
    max_tokens: int,
    max_padding: float,
    batch_overhead: float,
    batch_knee: float,
) -> None:
    selection = select_batch(
        costs,
        max_size=max_size,
        max_tokens=max_tokens,
        max_padding=max_padding,
        batch_overhead=batch_overhead,
        batch_knee=batch_knee,
    )
    chosen = selection.indices
    assert chosen[0] == 0, "the oldest candidate always goes"
    assert list(chosen) == sorted(set(chosen))
    assert len(chosen) <= max_size
    if len(chosen) > 1:
        assert len(chosen) * max(costs[i] for i in chosen) <= max_tokens
    greedy = batch_overhead + batch_knee >= max_tokens
    if greedy and len(chosen) > 1:
        assert padding_share(costs, chosen) <= max_padding + 1e-9
    if greedy and max_padding == 1.0 and not selection.full:
        assert len(chosen) == len(costs) < max_size


@settings(max_examples=300, deadline=None)
@given(
    costs=st.lists(st.integers(1, 512), min_size=1, max_size=120),
    max_size=st.integers(1, 64),
    extra=st.integers(1, 256),
    max_padding=st.floats(0.0, 1.0),
)
def test_greedy_fill_never_shrinks_with_a_larger_max_size(
    costs: list[int], max_size: int, extra: int, max_padding: float
) -> None:
    def size(bound: int) -> int:
        return len(
            select_batch(costs, max_size=bound, max_tokens=16384, max_padding=max_padding).indices
        )

    assert size(max_size + extra) >= size(max_size)


def _run_cost(run: list[int], overhead: float, knee: float) -> float:
    return overhead + max(0.0, len(run) * max(run) - knee)


def _allowed(run: list[int], max_size: int, max_tokens: int) -> bool:
    return len(run) == 1 or (len(run) <= max_size and len(run) * max(run) <= max_tokens)


def _cheapest(lengths: list[int], overhead: float, knee: float, bounds: tuple[int, int]) -> float:
    """Brute force: the least cost over every split of sorted `lengths` into allowed runs."""
    best = math.inf
    for cuts in itertools.product((False, True), repeat=max(len(lengths) - 1, 0)):
        runs, start = [], 0
        for position, cut in enumerate(cuts, start=1):
            if cut:
                runs.append(lengths[start:position])
                start = position
        runs.append(lengths[start:])
        if all(_allowed(run, *bounds) for run in runs):
            best = min(best, sum(_run_cost(run, overhead, knee) for run in runs))
    return best


@settings(max_examples=400, deadline=None)
@given(
    costs=st.lists(st.integers(1, 120), min_size=1, max_size=9),
    max_size=st.integers(1, 6),
    batch_overhead=st.floats(0.0, 400.0),
    batch_knee=st.one_of(st.just(0.0), st.floats(0.0, 400.0)),
)
def test_batch_belongs_to_a_cheapest_split(
    costs: list[int], max_size: int, batch_overhead: float, batch_knee: float
) -> None:
    assume(batch_overhead + batch_knee < 500)  # else the greedy fill runs, not the split
    bounds = (max_size, 500)
    selection = select_batch(
        costs,
        max_size=max_size,
        max_tokens=500,
        batch_overhead=batch_overhead,
        batch_knee=batch_knee,
    )
    chosen = sorted(costs[i] for i in selection.indices)
    rest = sorted(costs[i] for i in range(len(costs)) if i not in selection.indices)
    # The chosen run sits between the shorter and the longer rest (ties may go either way).
    shorter = [c for c in rest if c < chosen[0] or (c == chosen[0] and c != chosen[-1])]
    longer = rest[len(shorter) :]
    with_chosen = (
        (_cheapest(shorter, batch_overhead, batch_knee, bounds) if shorter else 0.0)
        + _run_cost(chosen, batch_overhead, batch_knee)
        + (_cheapest(longer, batch_overhead, batch_knee, bounds) if longer else 0.0)
    )
    cheapest = _cheapest(sorted(costs), batch_overhead, batch_knee, bounds)
    assert with_chosen <= cheapest + 1e-6


def test_small_overhead_keeps_lengths_apart() -> None:
    costs = [10, 50, 10, 50, 10, 50]
    tight = select_batch(costs, max_size=8, max_tokens=10_000, batch_overhead=5.0)
    assert sorted(costs[i] for i in tight.indices) == [10, 10, 10]
    assert not tight.full
    loose = select_batch(costs, max_size=8, max_tokens=10_000, batch_overhead=math.inf)
    assert len(loose.indices) == 6


def test_large_overhead_pays_for_some_padding() -> None:
    # Merging costs 3 x (12 - 10) = 6 padded tokens, less than one more batch (8).
    costs = [10, 12, 10, 12, 10, 12]
    selection = select_batch(costs, max_size=8, max_tokens=10_000, batch_overhead=8.0)
    assert len(selection.indices) == 6
    split = select_batch(costs, max_size=8, max_tokens=10_000, batch_overhead=4.0)
    assert sorted(costs[i] for i in split.indices) == [10, 10, 10]


def test_padding_within_the_knee_is_free_and_beyond_it_is_not() -> None:
    """A GPU-like batch cost: 500 tokens' worth for any batch up to 4000 padded tokens."""
    few = [8, 200] * 10  # 20 x 200 = 4000 padded tokens: within the knee
    mixed = select_batch(few, max_size=128, max_tokens=16384, batch_overhead=500, batch_knee=4000)
    assert len(mixed.indices) == 20
    linear = select_batch(few, max_size=128, max_tokens=16384, batch_overhead=500)
    assert sorted({few[i] for i in linear.indices}) == [8]
    many = [8, 200] * 40  # mixing all would be 80 x 200 padded tokens, far beyond the knee
    apart = select_batch(many, max_size=128, max_tokens=16384, batch_overhead=500, batch_knee=4000)
    assert sorted(many[i] for i in apart.indices) == [8] * 40
    # A linear fit of the same device puts the fixed cost past the token bound, and the greedy
    # fill then takes padding as free up to the bound: 200-token items join 8-token ones.
    blind = select_batch(many, max_size=128, max_tokens=16384, batch_overhead=20_000)
    assert {many[i] for i in blind.indices} == {8, 200}


def test_larger_max_size_never_narrows_the_candidates() -> None:
    """256 queued short items: the oldest one's batch grows with max_size, for either path."""
    rng = random.Random(11)
    costs = [rng.randint(5, 20) for _ in range(256)]
    for overhead in (2000.0, math.inf):
        sizes = [
            len(select_batch(costs, max_size=m, max_tokens=16384, batch_overhead=overhead).indices)
            for m in (32, 256, 4096)
        ]
        assert sizes == [32, 256, 256], (overhead, sizes)


def test_split_weighs_the_oldest_candidates_only() -> None:
    costs = [8] * (4 * SPLIT_CANDIDATES)
    split = select_batch(costs, max_size=4096, max_tokens=1 << 20, batch_overhead=100.0)
    assert split.indices == tuple(range(SPLIT_CANDIDATES)) and split.full
    greedy = select_batch(costs, max_size=4096, max_tokens=1 << 20)
    assert len(greedy.indices) == len(costs)


def test_split_of_256_candidates_stays_cheap() -> None:
    """The split runs on the event loop: one selection must stay around a millisecond."""
    rng = random.Random(5)
    worst_inputs = (
        [8] * 256,  # one long run of equal lengths
        [rng.randint(5, 20) for _ in range(256)],  # many near-equal lengths
        [rng.randint(1, 512) for _ in range(256)],  # all lengths different
    )
    for costs in worst_inputs:
        for overhead, knee in ((40.0, 0.0), (2000.0, 0.0), (500.0, 8000.0)):
            best = math.inf
            for _ in range(5):
                started = time.perf_counter()
                select_batch(
                    costs, max_size=1024, max_tokens=16384, batch_overhead=overhead, batch_knee=knee
                )
                best = min(best, time.perf_counter() - started)
            assert best < 0.010, (costs[:4], overhead, knee, best)  # measured: under 2 ms


def test_groups_similar_lengths() -> None:
    costs = [10, 200, 11, 190, 12, 195, 9, 205]
    selection = select_batch(costs, max_size=4, max_tokens=100_000)
    assert sorted(costs[i] for i in selection.indices) == [9, 10, 11, 12]
    assert selection.full


def test_token_bound_prefers_shorter_items_that_still_fit() -> None:
    # Oldest costs 100; 4 x 100 fits a 400 budget but a 101-token item would not.
    costs = [100, 101, 100, 100, 100]
    selection = select_batch(costs, max_size=32, max_tokens=400)
    assert selection.indices == (0, 2, 3, 4)
    assert selection.full


def test_lone_item_over_budget_still_goes() -> None:
    for overhead in (math.inf, 10.0):
        selection = select_batch([600, 10], max_size=8, max_tokens=500, batch_overhead=overhead)
        assert selection.indices == (0,)
        assert selection.full


def test_padding_cap_groups_lengths_into_smaller_batches() -> None:
    costs = [10, 100, 11, 98, 12, 101, 9, 99]
    selection = select_batch(costs, max_size=32, max_tokens=100_000, max_padding=0.25)
    assert sorted(costs[i] for i in selection.indices) == [9, 10, 11, 12]
    assert padding_share(costs, selection.indices) <= 0.25
    # The next item in length (98 tokens) would take padding past the cap; no bound is full.
    assert padding_share(costs, (*selection.indices, 3)) > 0.25
    assert not selection.full
