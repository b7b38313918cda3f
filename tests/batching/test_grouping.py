from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from batching import select_batch


@settings(max_examples=400, deadline=None)
@given(
    costs=st.lists(st.integers(1, 512), min_size=1, max_size=200),
    num_priority=st.integers(0, 10),
    max_size=st.integers(1, 64),
    max_tokens=st.integers(512, 16384),
)
def test_selection_never_exceeds_bounds(
    costs: list[int], num_priority: int, max_size: int, max_tokens: int
) -> None:
    selection = select_batch(costs, num_priority, max_size=max_size, max_tokens=max_tokens)
    chosen = selection.indices
    assert chosen, "a batch is never empty while candidates exist"
    assert len(set(chosen)) == len(chosen)
    assert len(chosen) <= max_size
    longest = max(costs[i] for i in chosen)
    assert selection.padded_tokens == len(chosen) * longest
    assert selection.padded_tokens <= max_tokens
    # Priority candidates go first, in order, as far as they fit.
    taken = [i for i in chosen if i < num_priority]
    assert taken == list(range(len(taken)))
    if num_priority:
        assert chosen[0] == 0
    if not selection.full:
        assert len(chosen) == len(costs) < max_size


def test_groups_similar_lengths() -> None:
    costs = [10, 200, 11, 190, 12, 195, 9, 205]
    selection = select_batch(costs, 1, max_size=4, max_tokens=100_000)
    assert sorted(costs[i] for i in selection.indices) == [9, 10, 11, 12]
    assert selection.full


def test_token_bound_prefers_shorter_items_that_still_fit() -> None:
    # Oldest costs 100; 4 x 100 fits a 400 budget but a 101-token item would not.
    costs = [100, 101, 100, 100, 100]
    selection = select_batch(costs, 1, max_size=32, max_tokens=400)
    assert sorted(selection.indices) == [0, 2, 3, 4]
    assert selection.padded_tokens == 400


def test_lone_item_over_budget_still_goes() -> None:
    selection = select_batch([600, 10], 1, max_size=8, max_tokens=500)
    assert selection.indices == (0,)
    assert selection.full


@settings(max_examples=400, deadline=None)
@given(
    costs=st.lists(st.integers(1, 512), min_size=1, max_size=120),
    num_priority=st.integers(0, 6),
    max_padding=st.floats(0.0, 1.0),
)
def test_padding_cap_holds_beyond_the_priority_items(
    costs: list[int], num_priority: int, max_padding: float
) -> None:
    selection = select_batch(
        costs, num_priority, max_size=64, max_tokens=1 << 20, max_padding=max_padding
    )
    chosen = selection.indices
    if len(chosen) > min(num_priority, len(costs)) and len(chosen) > 1:
        real = sum(costs[i] for i in chosen)
        assert 1 - real / selection.padded_tokens <= max_padding + 1e-9
    if not selection.full and not selection.capped:
        assert len(chosen) == len(costs)


def test_padding_cap_groups_lengths_into_smaller_batches() -> None:
    costs = [10, 100, 11, 98, 12, 101, 9, 99]
    selection = select_batch(costs, 1, max_size=32, max_tokens=100_000, max_padding=0.25)
    assert sorted(costs[i] for i in selection.indices) == [9, 10, 11, 12]
    assert selection.capped and not selection.full
