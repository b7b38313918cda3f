"""Shape buckets: padded shapes, their bounds, and the batcher counting what really runs."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from batching import BatchConfig, Batcher, BatchObserver, BatchStats, Buckets
from batching.buckets import geometric

BUCKETS = Buckets(lengths=(16, 32, 64, 128), sizes=(1, 2, 4, 8))


def test_lengths_pad_up_to_the_first_bucket_that_holds_them() -> None:
    assert [BUCKETS.length(n, 16384) for n in (1, 16, 17, 32, 100, 128)] == [
        16, 16, 32, 32, 128, 128,
    ]  # fmt: skip
    assert BUCKETS.length(129, 16384) == 129  # past the last bucket: its own length
    assert BUCKETS.length(100, 120) == 100  # a bucket over max_tokens is never used
    assert Buckets().length(37, 16384) == 37


def test_rows_pad_up_but_never_past_max_size_or_max_tokens() -> None:
    assert [BUCKETS.rows(k, 16, 64, 16384) for k in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert BUCKETS.rows(9, 16, 64, 16384) == 64  # past the last bucket: the most that fit
    assert BUCKETS.rows(9, 16, 12, 16384) == 12
    assert BUCKETS.rows(5, 128, 64, 768) == 6  # 8 rows of 128 would pass 768 tokens
    assert BUCKETS.rows(3, 128, 64, 100) == 3  # never below the items themselves
    assert Buckets(lengths=(16,)).rows(5, 16, 64, 16384) == 5


@pytest.mark.parametrize("max_size,max_tokens", [(8, 16384), (64, 1000), (6, 200), (64, 128)])
def test_shapes_lists_every_shape_a_batch_can_take(max_size: int, max_tokens: int) -> None:
    shapes = BUCKETS.shapes(100, max_size, max_tokens)
    seen = {
        BUCKETS.shape(items, longest, max_size, max_tokens)
        for longest in range(1, 101)
        for items in range(1, max_size + 1)
        # What the batcher lets through: it groups items by their padded lengths.
        if items * BUCKETS.length(longest, max_tokens) <= max_tokens
    }
    assert seen == set(shapes)
    assert all(rows * length <= max_tokens and rows <= max_size for rows, length in shapes)


def test_shapes_refuses_buckets_that_leave_shapes_unbounded() -> None:
    with pytest.raises(ValueError, match="do not bound"):
        BUCKETS.shapes(200, 8, 16384)  # lengths past the last bucket
    with pytest.raises(ValueError, match="do not bound"):
        Buckets(lengths=BUCKETS.lengths).shapes(100, 8, 16384)  # any batch size
    with pytest.raises(ValueError, match="ascending"):
        Buckets(lengths=(32, 16))


def test_geometric_buckets_step_by_the_ratio_and_end_at_the_top() -> None:
    assert geometric(16, 256, 2**0.5) == (16, 24, 32, 48, 64, 88, 128, 184, 256)
    assert geometric(1, 32, 2) == (1, 2, 4, 8, 16, 32)
    assert geometric(16, 100, 2) == (16, 32, 64, 100)


class ShapeRecorder(BatchObserver):
    def __init__(self) -> None:
        self.stats: list[BatchStats] = []

    def on_batch(self, stats: BatchStats) -> None:
        self.stats.append(stats)


async def test_batcher_counts_and_bounds_the_padded_shapes_that_run() -> None:
    # The collation pads as a model does, with the batcher's own padded_shape; every batch that
    # ran must be within the bounds once padded, and the batcher must report what really ran.
    rng = random.Random(5)
    config = BatchConfig(
        max_size=8, max_tokens=600, window_s=0.002, queue_max=10_000, buckets=BUCKETS
    )
    costs: dict[int, int] = {}
    ran: list[tuple[int, int]] = []

    def collate(items: Sequence[int]) -> tuple[list[int], int]:
        rows, length = config.padded_shape(len(items), max(costs[i] for i in items))
        assert rows >= len(items) and length >= max(costs[i] for i in items)
        return [*items, *[-1] * (rows - len(items))], length  # filler rows

    def run(batch: tuple[list[int], int]) -> list[int]:
        rows, length = batch
        ran.append((len(rows), length))
        return [item * 2 for item in rows if item >= 0]  # filler rows' outputs are dropped

    recorder = ShapeRecorder()
    batcher: Batcher[int, tuple[list[int], int], int] = Batcher(
        collate, run, config, observer=recorder
    )
    await batcher.start()

    async def client(base: int) -> None:
        for k in range(15):
            await asyncio.sleep(rng.random() * 0.003)
            items = [base * 1000 + k * 10 + j for j in range(rng.randint(1, 5))]
            for item in items:
                costs[item] = rng.randint(1, 128)
            assert await batcher.submit(items, [costs[i] for i in items]) == [2 * i for i in items]

    try:
        await asyncio.gather(*(client(c) for c in range(10)))
    finally:
        await batcher.stop()
    shapes = set(BUCKETS.shapes(128, config.max_size, config.max_tokens))
    assert set(ran) <= shapes
    assert all(rows * length <= config.max_tokens for rows, length in ran)
    assert [s.padded_tokens for s in recorder.stats] == [rows * length for rows, length in ran]
    assert any(s.size < rows for s, (rows, _) in zip(recorder.stats, ran, strict=True))
