"""Automatic canary rollback: the canary's share of server-side failures over its last requests.

With SIDECAR_CANARY_MAX_ERROR_RATIO set, every request routed to the canary counts as a success
or a failure once it ends. A failure is what the server answers with a 5xx of its own
making: an error in the model, a deadline passed, a dead device. A client's mistake (a 4xx),
a full queue or a client that went away says nothing about the version and is left out of the
window. When the window of the last `window` requests is full and its failure share passes the
limit, the registry drops the canary from the desired state (its reason says why) and routing
flips back.
"""

from __future__ import annotations

import asyncio
from collections import deque

from batching import BatcherClosedError, QueueFullError
from sidecar.errors import ApiError
from sidecar.models import InputError

# Errors that say nothing of the version: the client's, or the load's.
_NOT_THE_VERSIONS = (
    InputError,
    ApiError,
    QueueFullError,
    BatcherClosedError,
    asyncio.CancelledError,
)


def is_server_fault(error: BaseException | None) -> bool:
    """Whether a request that ended with `error` failed because of the version serving it."""
    return error is not None and not isinstance(error, _NOT_THE_VERSIONS)


class CanaryGuard:
    """The failure share over a canary's last `window` requests."""

    def __init__(self, max_ratio: float, window: int) -> None:
        self.max_ratio = max_ratio
        self.window = window
        self._version: str | None = None
        self._outcomes: deque[bool] = deque(maxlen=window)

    def record(self, version: str, error: BaseException | None) -> float | None:
        """Count one canary request that ended with `error` (None: a success); the failure
        share when it passes the limit, else None."""
        if version != self._version:
            self._version = version
            self._outcomes.clear()
        if error is not None and not is_server_fault(error):
            return None  # neither a success nor the version's failure
        self._outcomes.append(error is not None)
        if len(self._outcomes) < self.window:
            return None
        ratio = sum(self._outcomes) / self.window
        if ratio <= self.max_ratio:
            return None
        self._outcomes.clear()
        return ratio
