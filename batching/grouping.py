"""Choosing which queued items form the next batch: bounded, length-grouped, starvation-free."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Selection:
    """The items chosen for a batch.

    Attributes:
        indices: positions in the age-ordered candidate list, in the order they were taken.
        padded_tokens: len(indices) x the largest chosen cost.
        full: the batch holds `max_size` items, or the token bound stopped it while candidates
            remained.
        capped: `max_padding` stopped it while candidates remained. That decides which items
            go, not when: a capped batch is not full.
    """

    indices: tuple[int, ...]
    padded_tokens: int
    full: bool
    capped: bool = False


def select_batch(
    costs: Sequence[int],
    num_priority: int,
    *,
    max_size: int,
    max_tokens: int,
    max_padding: float = 1.0,
) -> Selection:
    """Pick a batch from candidates ordered oldest first.

    The first `num_priority` candidates (the oldest item, then items passed over for longer
    than the window) are taken first, in age order. The rest are added greedily by the least
    padding they add: an item no longer than the current longest wastes `longest - cost`
    tokens, a longer one wastes `size x (cost - longest)`. Nothing is added that would break
    `max_size` or `max_tokens` (padded: items x longest), and nothing beyond the priority ones
    that would leave more than `max_padding` of the padded tokens as padding: on a compute-bound
    device padding is wasted work, so similar lengths go together and the rest wait for the next
    batch. A lone item is always allowed, so a batch is never empty while candidates exist.

    Args:
        costs: per-candidate cost (token length), oldest candidate first.
        num_priority: how many leading candidates must go first.
        max_size: items per batch.
        max_tokens: padded tokens per batch.
        max_padding: the largest share of padding tokens (1.0: no limit).

    Returns:
        The chosen indices, their padded token count and whether a bound was hit.
    """
    chosen: list[int] = []
    longest = 0
    real = 0

    def fits(cost: int) -> bool:
        size = len(chosen) + 1
        return size <= max_size and (not chosen or size * max(longest, cost) <= max_tokens)

    def pads_too_much(cost: int) -> bool:
        padded = (len(chosen) + 1) * max(longest, cost)
        return 1.0 - (real + cost) / padded > max_padding

    for index in range(min(num_priority, len(costs))):
        if not fits(costs[index]):
            return Selection(tuple(chosen), len(chosen) * longest, True)
        chosen.append(index)
        longest = max(longest, costs[index])
        real += costs[index]

    rest = sorted(range(len(chosen), len(costs)), key=lambda i: (costs[i], i))
    # `below` walks down from the longest candidate not longer than `longest`, `above` walks up.
    split = bisect.bisect_right(rest, longest, key=costs.__getitem__)
    below, above = split - 1, split
    while below >= 0 or above < len(rest):
        waste_below = longest - costs[rest[below]] if below >= 0 else None
        waste_above = len(chosen) * (costs[rest[above]] - longest) if above < len(rest) else None
        take_below = waste_above is None or (waste_below is not None and waste_below <= waste_above)
        index = rest[below] if take_below else rest[above]
        if not fits(costs[index]):
            # A longer item that does not fit may leave room for a shorter one, never the reverse.
            if take_below or below < 0 or not fits(costs[rest[below]]):
                return Selection(tuple(chosen), len(chosen) * longest, True)
            take_below, index = True, rest[below]
        if pads_too_much(costs[index]):
            # The least wasteful candidate pads too much: so would every later one.
            return Selection(tuple(chosen), len(chosen) * longest, False, capped=True)
        chosen.append(index)
        longest = max(longest, costs[index])
        real += costs[index]
        if take_below:
            below -= 1
        else:
            above += 1
    return Selection(tuple(chosen), len(chosen) * longest, len(chosen) == max_size)
