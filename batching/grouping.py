"""Choosing which queued items form the next batch: bounded, length-grouped, starvation-free."""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

# The split weighs at most this many of the oldest candidates: its work grows with candidates x
# the longest run, and 256 keep one selection around a millisecond on the event loop (see
# `select_batch`). The greedy fill is linear after a sort and takes every candidate it is given.
SPLIT_CANDIDATES = 256


@dataclass(frozen=True)
class Selection:
    """The items chosen for a batch.

    Attributes:
        indices: positions in the age-ordered candidate list, ascending (oldest first).
        full: the batch holds as many items as it may, or the token bound kept out a candidate
            next to it in length: waiting for more items cannot grow it.
    """

    indices: tuple[int, ...]
    full: bool


def select_batch(
    costs: Sequence[int],
    *,
    max_size: int,
    max_tokens: int,
    max_padding: float = 1.0,
    batch_overhead: float = math.inf,
    batch_knee: float = 0.0,
) -> Selection:
    """Pick the next batch from candidates ordered oldest first; the oldest always goes.

    A batch of `p` padded tokens (items x longest) is estimated to cost
    `batch_overhead + max(0, p - batch_knee)` padded tokens' worth of time: a floor up to the
    knee, then one token's worth per padded token. On a CPU the knee is about 0 (a batch costs a
    little more than its tokens); on a GPU a pass costs the same up to thousands of tokens.

    The split: when a batch may cost more than its floor (`batch_overhead + batch_knee <
    max_tokens`), the oldest `SPLIT_CANDIDATES` candidates are sorted by cost (token length) and
    split into runs, the split that minimises the estimated time to run them all. The run holding
    the oldest candidate is the next batch; the rest wait for later batches, where newer
    arrivals may join them. So padding is spent only where it is cheaper than another batch: on
    a CPU runs are short and tight; on a GPU they mix any lengths up to the knee, and beyond it
    only as far as the floor pays for.

    The greedy fill: when any batch within the bounds costs just its floor, fewer batches is
    always better; the batch grows from the oldest candidate, least added padding first, as far
    as `max_size`, `max_tokens` and `max_padding` allow. It also runs while the cost is unknown
    (`batch_overhead` is `inf`), and there, blind to what padding costs, it needs the padding cap:
    on a CPU `max_padding` keeps the first batches from mixing short and long items. The split
    prices padding itself, so the cap does not apply to it: a fixed share would be wrong for a
    GPU below its knee (padding is free) and needless on a CPU (the split keeps lengths apart).

    Since the oldest candidate always goes, an item waits for at most as many batches as there
    were items queued before it. `max_size` only bounds runs: a larger one never narrows the
    candidates weighed.

    Args:
        costs: per-candidate cost (token length), oldest candidate first.
        max_size: items per batch.
        max_tokens: padded tokens per batch; a lone item over it still goes alone.
        max_padding: the largest share of padding tokens in a greedily filled batch (1.0: no
            limit).
        batch_overhead: what the smallest batch costs, in padded tokens' worth of time at the
            rate beyond the knee (`inf`: unknown, or tokens cost nothing measurable).
        batch_knee: padded tokens a batch holds for `batch_overhead` alone.

    Returns:
        The chosen indices and whether a bound stopped the batch.
    """
    if not costs:
        return Selection((), False)
    split = batch_overhead + batch_knee < max_tokens
    count = min(len(costs), SPLIT_CANDIDATES) if split else len(costs)
    if split:
        max_size = min(max_size, SPLIT_CANDIDATES)
    order = sorted(range(count), key=lambda i: (costs[i], i))
    lengths, anchor = [costs[i] for i in order], order.index(0)
    first, last = (
        _partition(lengths, anchor, max_size, max_tokens, batch_overhead, batch_knee)
        if split
        else _grow(lengths, anchor, max_size, max_tokens, max_padding)
    )
    size, longest = last - first + 1, lengths[last]
    # Full: the size bound, or the token bound keeps out the candidates next in length.
    full = size >= max_size or any(
        (size + 1) * max(lengths[neighbour], longest) > max_tokens
        for neighbour in (first - 1, last + 1)
        if 0 <= neighbour < count
    )
    return Selection(tuple(sorted(order[first : last + 1])), full)


def _partition(
    lengths: list[int], anchor: int, max_size: int, max_tokens: int, overhead: float, knee: float
) -> tuple[int, int]:
    """The run of sorted `lengths` holding `anchor` in the cheapest split into bounded runs.

    A run first..end-1 costs `overhead + max(0, items x longest - knee)`; it is allowed when it
    is a lone item or keeps `max_size` and `max_tokens`. A run whose longest and shortest items
    differ by more than `max(overhead, knee)` is never cheapest (running its shortest item alone
    saves more padding than the extra batch costs), so runs stop there: with a small overhead
    and knee, as on a CPU, runs are short and so is the search.

    least[end], the least cost of running lengths[:end], never falls as `end` grows (dropping
    the longest item never makes a split dearer). So of the last runs that stay within the knee
    the longest is cheapest, and only the runs beyond it need a search: for those, the cost is
    least[first] - first x longest plus a constant, and within a group of equal lengths that
    list is built once and extended as `end` moves on.
    """
    count = len(lengths)
    spread = max(overhead, knee)
    least, starts = [0.0] * (count + 1), [0] * (count + 1)
    steep: list[float] = []  # least[first] - first x longest, for first from `base` on
    base = longest = lowest_start = reach = within = 0
    for end in range(1, count + 1):
        if lengths[end - 1] != longest:  # a new group of equal lengths
            longest = lengths[end - 1]
            lowest_start = bisect.bisect_left(lengths, longest - spread)
            reach = max(1, min(max_size, max_tokens // longest))  # a lone item may always run
            within = int(knee // longest)  # items a run holds within the knee
            base = max(lowest_start, end - reach)
            steep = list(
                map(operator.sub, least[base:end], range(base * longest, end * longest, longest))
            )
        else:
            steep.append(least[end - 1] - (end - 1) * longest)
        lowest = max(lowest_start, end - reach)
        flat = max(lowest, end - within)
        flat_total = least[flat] if flat < end else math.inf
        steep_total, beyond, low = math.inf, steep[lowest - base : flat - base], math.inf
        if beyond:
            low = min(beyond)
            steep_total = low + end * longest - knee
        cheapest = min(flat_total, steep_total)
        # Of equally cheap last runs, take the longest if it holds the oldest item (its batch
        # grows), else the shortest (earlier runs, the oldest item's among them, keep more).
        longest_run = lowest + beyond.index(low) if steep_total == cheapest else flat
        if longest_run <= anchor < end:
            start = longest_run
        elif flat_total == cheapest:
            start = bisect.bisect_right(least, cheapest, flat, end) - 1
        else:
            start = flat - 1 - beyond[::-1].index(low)
        least[end], starts[end] = cheapest + overhead, start
    end = count
    while starts[end] > anchor:
        end = starts[end]
    return starts[end], end - 1


def _grow(
    lengths: list[int], anchor: int, max_size: int, max_tokens: int, max_padding: float
) -> tuple[int, int]:
    """Grow a run of sorted `lengths` from `anchor`, least added padding first, to a bound.

    With no batch cost worth saving, fewer batches is always better: the run grows as far as
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
