"""When a batch closes on an idle device: the window, the minimum size, and adaptive dispatch.

- at once when the queued items fill it: `max_size` items, or `max_tokens` padded tokens (items
  x longest, padded up to `config.buckets`), whichever comes first. Neither is ever exceeded.
- on an idle device, when the oldest item has waited `window_s` and at least `min_size` items
  are queued, or when it has waited twice the window whatever the count (nothing waits forever).
- on an idle device in adaptive mode, earlier, once `min_size` items are queued and the
  measured arrival rate says no further item is expected before the window runs out (so a
  lone request is not taxed the whole window).
While the device is busy the queue fills on its own: the next full batch is prepared while the
current one runs (exactly one runs at a time), and a partial batch goes when the device frees.
"""

from __future__ import annotations

from collections.abc import Callable

from batching.config import BatchConfig


def close_in(
    config: BatchConfig, *, waited: float, queued: int, expected: Callable[[float], float]
) -> float:
    """Seconds until a partial batch should close on an idle device; 0.0: now.

    Args:
        config: the batching bounds.
        waited: how long the oldest queued item has waited.
        queued: items queued.
        expected: items the arrival rate expects within a number of seconds.
    """
    enough = queued >= config.min_size
    if (
        (enough and waited >= config.window_s)
        or waited >= 2 * config.window_s
        or (enough and config.adaptive and expected(config.window_s - waited) < 1.0)
    ):
        return 0.0
    return (config.window_s if enough else 2 * config.window_s) - waited
