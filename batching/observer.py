"""What the batcher reports: per-batch figures and rejections."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchStats:
    """Figures of one forward pass, reported to the observer on the event loop."""

    size: int
    padded_tokens: int
    real_tokens: int
    queue_s: tuple[float, ...]
    wait_s: float
    inference_s: float

    @property
    def padding_ratio(self) -> float:
        """Share of the padded tokens that are padding."""
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0


class BatchObserver:
    """Receives the batcher's figures; this base ignores them."""

    def on_batch(self, stats: BatchStats) -> None:
        """Called after each successful forward pass."""

    def on_reject(self, reason: str, count: int) -> None:
        """Called when `count` items are refused or dropped (queue_full, deadline, cancelled)."""
