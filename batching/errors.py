"""Errors raised by the batcher; HTTP-agnostic, mapped to status codes by the sidecar.

BatchingError
 ├── QueueFullError          the queue holds QUEUE_MAX items; carries retry_after_s
 ├── DeadlineExceededError   the item's deadline passed before its result was ready
 ├── BatcherClosedError      the batcher was stopped
 ├── DeviceFailedError       `run` raised an error `is_fatal` calls fatal; nothing runs again
 ├── ItemTooLargeError       one item's cost exceeds the per-batch token budget
 ├── StepFailedError         a generation step raised: its sequences fail, the others go on
 └── BatchOutputError        the batch function returned the wrong number of results
"""

from __future__ import annotations


class BatchingError(Exception):
    """Base class of every error the batcher raises."""


class QueueFullError(BatchingError):
    """The queue cannot take the submitted items now."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(BatchingError):
    """The deadline passed before the result was ready."""


class BatcherClosedError(BatchingError):
    """The batcher was stopped: it accepts no new work."""


class DeviceFailedError(BatchingError):
    """The device failed for good (its error is the `__cause__`): the process must restart.

    The failing batch, everything queued then and every later submission get this error.
    """


class ItemTooLargeError(BatchingError):
    """An item's cost alone exceeds the batch token budget, so no batch can hold it."""


class StepFailedError(BatchingError):
    """A generation step raised a recoverable error: the sequences of that step end with it."""


class BatchOutputError(BatchingError):
    """The batch function returned a result count that differs from its input count."""
