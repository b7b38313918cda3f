from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from batching import select_batch

overheads = st.one_of(st.just(math.inf), st.floats(0.0, 20_000.0))


@settings(max_examples=400, deadline=None)
@given(
    costs=st.lists(st.integers(1, 512), min_size=1, max_size=200),
    max_size=st.integers(1, 64),
    max_tokens=st.integers(512, 16384),
    max_padding=st.floats(0.0, 1.0),
    batch_overhead=overheads,
)
def test_selection_keeps_every_bound_and_takes_the_oldest(
    costs: list[int], max_size: int, max_tokens: int, max_padding: float, batch_overhead: float
) -> None:
    selection = select_batch(
        costs,
        max_size=max_size,
        max_tokens=max_tokens,
        max_padding=max_padding,
        batch_overhead=batch_overhead,
    )
    chosen = selection.indices
    assert chosen[0] == 0, "the oldest candidate always goes"
    assert list(chosen) == sorted(set(chosen))
    assert len(chosen) <= max_size
    longest = max(costs[i] for i in chosen)
    assert selection.padded_tokens == len(chosen) * longest
    if len(chosen) > 1:
        assert selection.padded_tokens <= max_tokens
        real = sum(costs[i] for i in chosen)
        assert 1 - real / selection.padded_tokens <= max_padding + 1e-9
    if math.isinf(batch_overhead) and max_padding == 1.0 and not selection.full:
        assert len(chosen) == len(costs) < max_size


def _run_cost(run: list[int], overhead: float) -> float:
    return overhead + len(run) * max(run)


def _allowed(run: list[int], max_size: int, max_tokens: int, max_padding: float) -> bool:
    padded = len(run) * max(run)
    return len(run) == 1 or (
        len(run) <= max_size and padded <= max_tokens and padded - sum(run) <= max_padding * padded
    )


def _cheapest(lengths: list[int], overhead: float, bounds: tuple[int, int, float]) -> float:
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
            best = min(best, sum(_run_cost(run, overhead) for run in runs))
    return best


@settings(max_examples=300, deadline=None)
@given(
    costs=st.lists(st.integers(1, 120), min_size=1, max_size=9),
    max_size=st.integers(1, 6),
    max_padding=st.sampled_from([0.1, 0.3, 0.5, 1.0]),
    batch_overhead=st.floats(0.0, 400.0),
)
def test_batch_belongs_to_a_cheapest_split(
    costs: list[int], max_size: int, max_padding: float, batch_overhead: float
) -> None:
    bounds = (max_size, 500, max_padding)
    selection = select_batch(
        costs,
        max_size=max_size,
        max_tokens=500,
        max_padding=max_padding,
        batch_overhead=batch_overhead,
    )
    chosen = sorted(costs[i] for i in selection.indices)
    rest = sorted(costs[i] for i in range(len(costs)) if i not in selection.indices)
    # The chosen run sits between the shorter and the longer rest (ties may go either way).
    shorter = [c for c in rest if c < chosen[0] or (c == chosen[0] and c != chosen[-1])]
    longer = rest[len(shorter) :]
    with_chosen = (
        (_cheapest(shorter, batch_overhead, bounds) if shorter else 0.0)
        + _run_cost(chosen, batch_overhead)
        + (_cheapest(longer, batch_overhead, bounds) if longer else 0.0)
    )
    assert with_chosen <= _cheapest(sorted(costs), batch_overhead, bounds) + 1e-6


def test_small_overhead_keeps_lengths_apart() -> None:
    costs = [10, 50, 10, 50, 10, 50]
    tight = select_batch(costs, max_size=8, max_tokens=10_000, batch_overhead=5.0)
    assert sorted(costs[i] for i in tight.indices) == [10, 10, 10]
    assert not tight.full and not tight.capped
    loose = select_batch(costs, max_size=8, max_tokens=10_000, batch_overhead=math.inf)
    assert len(loose.indices) == 6


def test_large_overhead_pays_for_some_padding() -> None:
    # Merging costs 3 x (12 - 10) = 6 padded tokens, less than one more batch (8).
    costs = [10, 12, 10, 12, 10, 12]
    selection = select_batch(costs, max_size=8, max_tokens=10_000, batch_overhead=8.0)
    assert len(selection.indices) == 6
    split = select_batch(costs, max_size=8, max_tokens=10_000, batch_overhead=4.0)
    assert sorted(costs[i] for i in split.indices) == [10, 10, 10]


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
    assert selection.padded_tokens == 400
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
    assert selection.capped and not selection.full
