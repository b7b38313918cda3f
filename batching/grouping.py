"""Choosing which queued items form the next batch: bounded, length-grouped, starvation-free."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Splitting candidates optimally takes up to candidates x max_size steps: the split considers
# only as many of the oldest candidates as keep it within this many.
PARTITION_STEPS = 4096


@dataclass(frozen=True)
class Selection:
    """The items chosen for a batch.

    Attributes:
        indices: positions in the age-ordered candidate list, ascending (oldest first).
        padded_tokens: len(indices) x the largest chosen cost.
        full: the batch holds `max_size` items, or the token bound kept out a candidate next to
            it in length.
        capped: `max_padding` kept out a candidate next to it in length. That decides which
            items go, not when: a capped batch is not full.
    """

    indices: tuple[int, ...]
    padded_tokens: int
    full: bool
    capped: bool = False


def select_batch(
    costs: Sequence[int],
    *,
    max_size: int,
    max_tokens: int,
    max_padding: float = 1.0,
    batch_overhead: float = math.inf,
) -> Selection:
    """Pick the next batch from candidates ordered oldest first; the oldest always goes.

    The candidates are sorted by cost (token length) and split into runs of similar length, the
    split that minimises the estimated time to run them all: each batch costs `batch_overhead`
    plus its padded tokens (items x longest). The run holding the oldest candidate is the next
    batch; the rest wait for later batches, where newer arrivals may join them. Every run keeps
    `max_size`, `max_tokens` and, beyond a lone item, `max_padding` (the largest share of padding
    in its padded tokens). So padding is spent only where a batch's fixed cost is worth more:
    on a CPU, where a batch costs little beyond its tokens, runs are short and tight; on a GPU,
    where the fixed cost dominates, they are as large as the bounds allow.

    Since the oldest candidate always goes, an item waits for at most as many batches as there
    were items queued before it.

    Args:
        costs: per-candidate cost (token length), oldest candidate first.
        max_size: items per batch.
        max_tokens: padded tokens per batch; a lone item over it still goes alone.
        max_padding: the largest share of padding tokens (1.0: no limit).
        batch_overhead: the fixed cost of one batch in padded tokens' worth of time. At
            `max_tokens` or more (`inf`: unknown) no split can pay for itself, so the batch
            grows from the oldest item, least added padding first, as far as the bounds allow.

    Returns:
        The chosen indices, their padded token count and whether a bound stopped the batch.
    """
    count = len(costs)
    if count == 0:
        return Selection((), 0, False)
    split = batch_overhead < max_tokens
    if split:
        # Split the oldest candidates only: the oldest always goes, and they give enough choice.
        count = min(count, max(PARTITION_STEPS // max_size, 2))
    order = sorted(range(count), key=lambda i: (costs[i], i))
    lengths, anchor = [costs[i] for i in order], order.index(0)
    first, last = (
        _partition(lengths, anchor, max_size, max_tokens, max_padding, batch_overhead)
        if split
        else _grow(lengths, anchor, max_size, max_tokens, max_padding)
    )
    chosen = order[first : last + 1]
    size, longest, real = len(chosen), costs[chosen[-1]], sum(costs[i] for i in chosen)
    # Which bound, if any, kept out the candidates next in length?
    full, capped = size >= max_size, False
    for neighbour in (first - 1, last + 1):
        if 0 <= neighbour < count:
            cost = lengths[neighbour]
            grown = (size + 1) * max(cost, longest)
            full = full or grown > max_tokens
            capped = capped or grown - real - cost > max_padding * grown
    return Selection(tuple(sorted(chosen)), size * longest, full, capped and not full)


def _partition(
    lengths: list[int],
    anchor: int,
    max_size: int,
    max_tokens: int,
    max_padding: float,
    overhead: float,
) -> tuple[int, int]:
    """The run of sorted `lengths` holding `anchor` in the cheapest split into bounded runs.

    The cost of a split is, per run, `overhead` + items x longest. A run first..last is allowed
    when it is a lone item, or holds at most `max_size` items, `max_tokens` padded tokens and a
    share of padding no larger than `max_padding`. A run whose longest and shortest items differ
    by more than `overhead` is never cheapest (running its shortest item alone saves more
    padding than the extra batch costs), so runs stop growing there: with a small overhead, as
    on a CPU, the search is short.
    """
    count = len(lengths)
    prefix = [0]
    for length in lengths:
        prefix.append(prefix[-1] + length)
    inf = math.inf
    # before[p]: least cost of running lengths[:p]; after[p]: of running lengths[p:].
    before = [0.0] + [inf] * count
    for end in range(1, count + 1):
        longest, best = lengths[end - 1], before[end - 1] + overhead + lengths[end - 1]
        # Growing a run downwards only adds tokens and padding share: stop at the first miss.
        for first in range(end - 2, max(end - max_size, 0) - 1, -1):
            padded = (end - first) * longest
            if (
                padded > max_tokens
                or padded - prefix[end] + prefix[first] > max_padding * padded
                or longest - lengths[first] > overhead
            ):
                break
            best = min(best, before[first] + overhead + padded)
        before[end] = best
    after = [inf] * count + [0.0]
    for first in range(count - 1, -1, -1):
        best = overhead + lengths[first] + after[first + 1]
        for last in range(first + 1, min(first + max_size, count)):
            padded = (last - first + 1) * lengths[last]
            if padded > max_tokens or lengths[last] - lengths[first] > overhead:
                break
            if padded - prefix[last + 1] + prefix[first] <= max_padding * padded:
                best = min(best, overhead + padded + after[last + 1])
        after[first] = best
    chosen, best_total = (
        (anchor, anchor),
        before[anchor] + overhead + lengths[anchor] + after[anchor + 1],
    )
    for first in range(anchor, max(anchor - max_size, -1), -1):
        for last in range(max(anchor, first + 1), min(first + max_size, count)):
            padded = (last - first + 1) * lengths[last]
            if padded > max_tokens or lengths[last] - lengths[first] > overhead:
                break
            if padded - prefix[last + 1] + prefix[first] > max_padding * padded:
                continue
            total = before[first] + overhead + padded + after[last + 1]
            # Ties go to the larger batch: the same estimated time, fewer items left waiting.
            if total < best_total or (total == best_total and last - first > chosen[1] - chosen[0]):
                chosen, best_total = (first, last), total
    return chosen


def _grow(
    lengths: list[int], anchor: int, max_size: int, max_tokens: int, max_padding: float
) -> tuple[int, int]:
    """Grow a run of sorted `lengths` from `anchor`, least added padding first, to a bound.

    With no known batch overhead, fewer batches is always better: the run grows as far as
    `max_size`, `max_tokens` and `max_padding` allow. An item no longer than the longest adds
    `longest - cost` padding, a longer one adds `size x (cost - longest)`.
    """
    first = last = anchor
    real = lengths[first]
    while last - first + 1 < max_size:
        size, longest = last - first + 1, lengths[last]
        waste_below = longest - lengths[first - 1] if first > 0 else None
        waste_above = size * (lengths[last + 1] - longest) if last + 1 < len(lengths) else None
        if waste_below is None and waste_above is None:
            break
        take_below = waste_above is None or (waste_below is not None and waste_below <= waste_above)
        grown_longest = longest if take_below else lengths[last + 1]
        added = lengths[first - 1] if take_below else lengths[last + 1]
        padded = (size + 1) * grown_longest
        if padded > max_tokens and not take_below and waste_below is not None:
            # A longer item that does not fit may leave room for a shorter one.
            take_below, grown_longest, added = True, longest, lengths[first - 1]
            padded = (size + 1) * longest
        if padded > max_tokens or padded - real - added > max_padding * padded:
            break
        real += added
        if take_below:
            first -= 1
        else:
            last += 1
    return first, last
