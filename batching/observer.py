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
    # What `on_submit` returned for each item's submission, in item order, and when the batch
    # left the queue and its forward pass began (the batcher's clock): for a tracer.
    tags: tuple[object, ...] = ()
    dispatched_at: float = 0.0
    started_at: float = 0.0
    bulk: bool = False  # a batch of the bulk lane (jobs; see `batching.lanes`)

    @property
    def padding_ratio(self) -> float:
        """Share of the padded tokens that are padding."""
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0


class BatchObserver:
    """Receives the batcher's figures; this base ignores them."""

    def on_submit(self) -> object:
        """Called in the submitting task as its items are queued; what it returns comes back
        as each of those items' `BatchStats.tags` entry (a tracer's request span)."""
        return None

    def on_batch(self, stats: BatchStats) -> None:
        """Called after each successful forward pass."""

    def on_reject(self, reason: str, count: int) -> None:
        """Called when `count` items are refused or dropped (queue_full, deadline, cancelled)."""

    def on_interactive_wait(self, seconds: float) -> None:
        """Called for each interactive item that arrived while a bulk batch ran, with how long
        it waited for that batch to end."""


class GenerationObserver:
    """Receives the generation engine's figures (on the event loop); this base ignores them."""

    def on_first_token(self, seconds: float) -> None:
        """A sequence's first token came `seconds` after its arrival."""

    def on_inter_token(self, seconds: float) -> None:
        """A sequence's next token came `seconds` after its previous one."""

    def on_tokens(self, kind: str, count: int) -> None:
        """`count` tokens of `kind` (`prompt`, `generated`) were processed."""

    def on_abort(self, reason: str) -> None:
        """A sequence ended early: `disconnect`, `cancelled`, `deadline` or `error`."""

    def on_reject(self, reason: str, count: int) -> None:
        """`count` sequences were refused (`queue_full`), as `BatchObserver.on_reject`."""
