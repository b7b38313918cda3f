"""Generic asyncio dynamic batcher: standard library only."""

from __future__ import annotations

from batching.batcher import Batcher
from batching.buckets import Buckets
from batching.config import BatchConfig
from batching.costs import BatchCost
from batching.errors import (
    BatcherClosedError,
    BatchingError,
    BatchOutputError,
    DeadlineExceededError,
    DeviceFailedError,
    ItemTooLargeError,
    QueueFullError,
)
from batching.grouping import Selection, select_batch
from batching.observer import BatchObserver, BatchStats

__all__ = [
    "BatchConfig",
    "BatchCost",
    "BatchObserver",
    "BatchOutputError",
    "BatchStats",
    "Batcher",
    "BatcherClosedError",
    "BatchingError",
    "Buckets",
    "DeadlineExceededError",
    "DeviceFailedError",
    "ItemTooLargeError",
    "QueueFullError",
    "Selection",
    "select_batch",
]
