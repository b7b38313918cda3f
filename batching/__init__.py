"""Generic asyncio dynamic batcher: standard library only."""

from __future__ import annotations

from batching.batcher import Batcher, BatchObserver, BatchStats
from batching.config import BatchConfig
from batching.errors import (
    BatcherClosedError,
    BatchingError,
    BatchOutputError,
    DeadlineExceededError,
    ItemTooLargeError,
    QueueFullError,
)
from batching.grouping import Selection, select_batch

__all__ = [
    "BatchConfig",
    "BatchObserver",
    "BatchOutputError",
    "BatchStats",
    "Batcher",
    "BatcherClosedError",
    "BatchingError",
    "DeadlineExceededError",
    "ItemTooLargeError",
    "QueueFullError",
    "Selection",
    "select_batch",
]
