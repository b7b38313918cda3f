"""Admission: whether the queue takes a request now.

Two bounds: the queue's size (`queue_max` items), and the deadline's reach. The batcher tells
`Admission` how fast batches drain items (items per second of forward pass, smoothed), so a
request whose items would wait behind the queue past their deadline is refused at once with a
429 and a `Retry-After`, rather than held until its 504: under overload the server sheds what it
cannot serve in time and answers every request promptly (a client can retry elsewhere), and
the connections and memory held by waiting requests stay bounded by what it can serve.
"""

from __future__ import annotations

from batching.errors import QueueFullError

_SMOOTHING = 0.3  # weight of the newest batch in the drain rate


class Admission:
    """The queue's bounds for new requests; `observe` each batch that ran."""

    def __init__(self, queue_max: int) -> None:
        self.queue_max = queue_max
        self._items = 0.0  # smoothed items per batch
        self._busy_s = 0.0  # smoothed seconds per batch

    @property
    def drain_per_s(self) -> float:
        """Items per second of forward passes, recently; 0 until a batch ran.

        A ratio of smoothed sums, not a smoothed ratio: with lengths grouped, batches of many
        short items alternate with batches of few long ones, and the mean of their rates
        would overstate what the queue drains by several times.
        """
        return self._items / self._busy_s if self._busy_s > 0 else 0.0

    def observe(self, size: int, elapsed_s: float) -> None:
        """A batch of `size` items ran in `elapsed_s`."""
        elapsed_s = max(elapsed_s, 1e-6)
        if self._busy_s == 0.0:  # the first batch: nothing to smooth with
            self._items, self._busy_s = float(size), elapsed_s
        else:
            self._items += _SMOOTHING * (size - self._items)
            self._busy_s += _SMOOTHING * (elapsed_s - self._busy_s)

    def check(self, queued: int, incoming: int, now: float, deadline: float | None) -> None:
        """Return if `incoming` items may join `queued` ones; else raise QueueFullError.

        Raises:
            QueueFullError: the queue is full, or the items queued ahead would take (at the
                measured drain rate) until past `deadline`; `retry_after_s` estimates when
                there is room.
        """
        excess = queued + incoming - self.queue_max
        if excess > 0:
            raise QueueFullError(
                f"queue holds {queued} of {self.queue_max} items",
                retry_after_s=self._seconds(excess),
            )
        if deadline is not None and self.drain_per_s > 0:
            wait_s = (queued + incoming) / self.drain_per_s
            if now + wait_s > deadline:
                raise QueueFullError(
                    f"the {queued} items queued ahead would take about {wait_s:.1f} s, "
                    f"past the request's deadline in {max(deadline - now, 0.0):.1f} s",
                    retry_after_s=self._seconds(queued + incoming),
                )

    def _seconds(self, items: int) -> float:
        return max(1.0, items / self.drain_per_s) if self.drain_per_s > 0 else 1.0
