"""Generic asyncio dynamic batcher and the iteration-level scheduler: standard library only."""

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
    StepFailedError,
)
from batching.grouping import Selection, select_batch
from batching.observer import BatchObserver, BatchStats, GenerationObserver
from batching.scheduler import Chunk, Plan, Scheduler, Sequence

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
    "Chunk",
    "DeadlineExceededError",
    "DeviceFailedError",
    "GenerationObserver",
    "ItemTooLargeError",
    "Plan",
    "QueueFullError",
    "Scheduler",
    "Selection",
    "Sequence",
    "StepFailedError",
    "select_batch",
]
