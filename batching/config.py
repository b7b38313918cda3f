"""Bounds of the dynamic batcher."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchConfig:
    """Batching bounds; see `batching.batcher` for how each one is applied.

    Attributes:
        window_s: the longest the oldest queued item waits for company while the device is idle.
        min_size: a batch closes on the window only once it has this many items (after twice
            the window it closes regardless).
        max_size: items per batch, never exceeded.
        max_tokens: padded tokens per batch (items x largest cost), never exceeded.
        queue_max: queued items; a submission that would exceed it is rejected at once.
        adaptive: dispatch before the window runs out when arrivals say waiting cannot pay off.
        max_padding: the largest share of a greedily filled batch's padded tokens that may be
            padding, beyond a lone item (1.0: no limit): it bounds the fill used while the batch
            cost is unknown or a batch's floor covers `max_tokens`; the cost split prices padding
            itself (see `select_batch`). It decides which items go, not when.
        oom_cooldown_s: how long the token budget stays halved after an out-of-memory error.
    """

    window_s: float = 0.020
    min_size: int = 1
    max_size: int = 32
    max_tokens: int = 16384
    queue_max: int = 512
    adaptive: bool = True
    max_padding: float = 1.0
    oom_cooldown_s: float = 30.0

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
        if self.oom_cooldown_s < 0:
            raise ValueError(f"oom_cooldown_s must be >= 0, got {self.oom_cooldown_s}")
