"""Shape buckets: the padded shapes a batch may take, so that only a small set ever runs.

A batch of `items` whose longest item has `longest` tokens runs as (rows, length): the length
padded up to the first length bucket that holds it, and the item count padded up to the first
size bucket that holds it (the extra rows are filler whose outputs are dropped). Padding never
takes a batch past `max_size` rows or `max_tokens` padded tokens: a size bucket that would is
cut to the most rows that fit, and a length bucket that would is not used (the batch keeps its
own length). Lengths beyond the last bucket stay as they are. With no buckets every batch runs
at its own shape (items x longest).

A device that sees few shapes reuses what it keeps per shape: kernels chosen or compiled, CUDA
graphs, allocator blocks of the same sizes. The cost is padding, which a GPU below its knee
runs for free and a CPU pays for token by token.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class Buckets:
    """Length and size buckets, ascending; empty: no padding in that dimension.

    Attributes:
        lengths: token lengths a batch is padded up to.
        sizes: item counts a batch is padded up to.
    """

    lengths: tuple[int, ...] = ()
    sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name, values in (("lengths", self.lengths), ("sizes", self.sizes)):
            if any(v < 1 for v in values) or list(values) != sorted(set(values)):
                raise ValueError(f"bucket {name} must be ascending positive integers: {values}")

    def __bool__(self) -> bool:
        return bool(self.lengths or self.sizes)

    def length(self, tokens: int, max_tokens: int) -> int:
        """`tokens` padded up to its length bucket (unchanged past the last or `max_tokens`)."""
        index = bisect.bisect_left(self.lengths, tokens)
        if index == len(self.lengths) or self.lengths[index] > max_tokens:
            return tokens
        return self.lengths[index]

    def rows(self, items: int, length: int, max_size: int, max_tokens: int) -> int:
        """`items` padded up to its size bucket; past the last one, and wherever `max_size` or
        `max_tokens` cut a bucket, to the most rows that fit. Never below `items`."""
        if not self.sizes:
            return items
        most = max(items, min(max_size, max_tokens // length))
        index = bisect.bisect_left(self.sizes, items)
        return most if index == len(self.sizes) else min(self.sizes[index], most)

    def shape(self, items: int, longest: int, max_size: int, max_tokens: int) -> tuple[int, int]:
        """(rows, length) that a batch of `items` whose longest has `longest` tokens runs as."""
        length = self.length(longest, max_tokens)
        return self.rows(items, length, max_size, max_tokens), length

    def shapes(self, max_length: int, max_size: int, max_tokens: int) -> list[tuple[int, int]]:
        """Every (rows, length) that a batch of items of at most `max_length` tokens may run
        as, for a warm-up that covers them all.

        Raises:
            ValueError: a dimension has no buckets, or the length buckets do not cover
                `max_length` within `max_tokens`: shapes would then be unbounded.
        """
        index = bisect.bisect_left(self.lengths, max_length)
        if not self.sizes or index == len(self.lengths) or self.lengths[index] > max_tokens:
            raise ValueError(
                f"buckets {self} do not bound the shapes of {max_length}-token items "
                f"within {max_tokens} tokens"
            )
        shapes = []
        for length in self.lengths[: index + 1]:
            most = max(1, min(max_size, max_tokens // length))
            rows = {self.rows(n, length, max_size, max_tokens) for n in self.sizes if n <= most}
            shapes += [(count, length) for count in sorted({*rows, most})]
        return shapes


def geometric(low: int, high: int, ratio: float) -> tuple[int, ...]:
    """Buckets from `low` to `high`, each about `ratio` times the last, `high` included.

    Rounded to multiples of 8 from 16 on (shapes that vector kernels handle well).
    """
    if low < 1 or high < low or ratio <= 1:
        raise ValueError(f"need 1 <= low <= high and ratio > 1, got {low}, {high}, {ratio}")
    values, value = [], float(low)
    while value < high:
        rounded = round(value) if value < 16 else 8 * round(value / 8)
        values.append(min(rounded, high))
        value = max(value * ratio, rounded + 1)
    return tuple(sorted({*values, high}))
