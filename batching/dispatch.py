"""A batch on its way to the device: how it was dispatched, and the figures it reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batching.observer import BatchStats


@dataclass
class Dispatch:
    """How a batch left the queue."""

    # Another batch runs: collate on the preparation thread meanwhile (idle: on the device's).
    overlap: bool
    wait_s: float  # how long it waited for company on an idle device
    observe_from: float | None  # the arrival rate learns from this moment on (adaptive mode)
    dispatched_at: float
    bulk: bool = False  # a batch of the bulk lane (`batching.lanes`)
    stepped: bool = False  # a bulk batch run a step per device call (`batching.steps`)
    bulk_wait_s: float | None = None  # how long a step of a bulk pass held this batch back

    def stats(
        self, live: Sequence[Any], padded_tokens: int, started: float, elapsed: float
    ) -> BatchStats:
        """The figures of the batch's forward pass over its `live` entries (`queue.Entry`)."""
        return BatchStats(
            size=len(live),
            padded_tokens=padded_tokens,
            real_tokens=sum(e.cost for e in live),
            queue_s=tuple(self.dispatched_at - e.enqueued_at for e in live),
            wait_s=self.wait_s,
            inference_s=elapsed,
            tags=tuple(e.tag for e in live),
            dispatched_at=self.dispatched_at,
            started_at=started,
            bulk=self.bulk,
        )
