"""Bounds of the dynamic batcher."""

from __future__ import annotations

from dataclasses import dataclass, field

from batching.buckets import Buckets


@dataclass(frozen=True)
class BatchConfig:
    """Batching bounds; see `batching.batcher` for how each one is applied.

    Attributes:
        window_s: the longest the oldest queued item waits for company while the device is idle.
        min_size: a batch closes on the window only once it has this many items (after twice
            the window it closes regardless).
        max_size: items per batch, never exceeded.
        max_tokens: padded tokens per batch (rows x padded length, see `buckets`), never
            exceeded.
        queue_max: queued items; a submission that would exceed it is rejected at once.
        adaptive: dispatch before the window runs out when arrivals say waiting cannot pay off.
        max_padding: the largest share of a greedily filled batch's padded tokens that may be
            padding, beyond a lone item (1.0: no limit): it bounds the fill used while the batch
            cost is unknown or a batch's floor covers `max_tokens`; the cost split prices padding
            itself (see `select_batch`). It decides which items go, not when.
        oom_cooldown_s: how long the token budget stays halved after an out-of-memory error.
        bulk_guard_s: bulk items (jobs) wait at most this long between two bulk batches under
            constant interactive load (see `batching.lanes`).
        bulk_floors: a bulk batch costs at most `1 + bulk_floors` of the smallest batch.
        bulk_rider_share: bulk items ride in an interactive batch's free rows as far as the
            fitted cost says they add at most this share to its time (0: never).
        buckets: the shapes batches are padded to (see `batching.buckets`); the batcher counts
            padded tokens as they run, `padded_shape`, and the one who collates pads the same
            way. Empty: each batch runs at items x its largest cost.
    """

    window_s: float = 0.020
    min_size: int = 1
    max_size: int = 32
    max_tokens: int = 16384
    queue_max: int = 512
    adaptive: bool = True
    max_padding: float = 1.0
    oom_cooldown_s: float = 30.0
    buckets: Buckets = field(default_factory=Buckets)
    bulk_guard_s: float = 0.5
    bulk_floors: float = 1.0
    bulk_rider_share: float = 0.02

    def __post_init__(self) -> None:
        if not 0.0 <= self.window_s <= 1.0:
            raise ValueError(f"window_s must be within [0, 1], got {self.window_s}")
        if self.max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {self.max_size}")
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError(f"min_size must be within [1, max_size], got {self.min_size}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.queue_max < 1:
            raise ValueError(f"queue_max must be >= 1, got {self.queue_max}")
        if not 0.0 <= self.max_padding <= 1.0:
            raise ValueError(f"max_padding must be within [0, 1], got {self.max_padding}")
        if self.bulk_guard_s <= 0 or self.bulk_floors <= 0:
            raise ValueError("bulk_guard_s and bulk_floors must be > 0")
        if not 0.0 <= self.bulk_rider_share <= 1.0:
            raise ValueError(f"bulk_rider_share must be in [0, 1], got {self.bulk_rider_share}")
        if self.oom_cooldown_s < 0:
            raise ValueError(f"oom_cooldown_s must be >= 0, got {self.oom_cooldown_s}")

    def padded_shape(self, items: int, longest: int) -> tuple[int, int]:
        """(rows, length) that `items` items whose largest cost is `longest` run as."""
        return self.buckets.shape(items, longest, self.max_size, self.max_tokens)

    def padded_tokens(self, items: int, longest: int) -> int:
        """Rows x length of `padded_shape`: the tokens such a batch runs."""
        rows, length = self.padded_shape(items, longest)
        return rows * length

    def padded_length(self, cost: int) -> int:
        """An item's cost padded up to its length bucket."""
        return self.buckets.length(cost, self.max_tokens)
