"""What a batch costs on this device: a fixed part and a part per padded token, as measured."""

from __future__ import annotations

import math


class BatchCost:
    """Fits `seconds = fixed + per_token x padded_tokens` to the batches that ran.

    An exponentially weighted least-squares fit, so it follows the device as load and clocks
    change, on relative errors (each batch weighted by 1 / seconds squared): on a shared machine
    noise scales with a batch's time, and an unweighted fit lets the noise of large batches
    swamp the fixed part that only small ones show (measured on the demo model: 4 tokens
    unweighted against 46 weighted, where single-item passes put it at about 45).

    The ratio `fixed / per_token` is what batch forming needs: how many padded tokens one more
    batch is worth. On a CPU it is small (a batch costs about its tokens, so padding never
    pays); on a GPU it is large (launches and weight reads dominate, so batches should be as
    large as the bounds allow).

    Args:
        decay: weight kept by older batches at each new one (0.95: about the last 20 batches).
        min_batches: batches seen before the fit is trusted.
    """

    def __init__(self, decay: float = 0.95, min_batches: int = 8) -> None:
        self._decay = decay
        self._min_batches = min_batches
        self._seen = 0
        self._weight = 0.0
        self._sum_x = self._sum_y = self._sum_xx = self._sum_xy = 0.0
        self._overhead_tokens = math.inf
        self._fitted = False

    def observe(self, padded_tokens: int, seconds: float) -> None:
        """Add one batch's padded tokens and forward-pass time."""
        if padded_tokens <= 0 or seconds <= 0:
            return
        keep, weight = self._decay, 1.0 / (seconds * seconds)
        self._weight = self._weight * keep + weight
        self._sum_x = self._sum_x * keep + weight * padded_tokens
        self._sum_y = self._sum_y * keep + weight * seconds
        self._sum_xx = self._sum_xx * keep + weight * padded_tokens * padded_tokens
        self._sum_xy = self._sum_xy * keep + weight * padded_tokens * seconds
        self._seen += 1
        if self._seen >= self._min_batches:
            self._refit()

    @property
    def fitted(self) -> bool:
        """Whether enough batches of different sizes have run to tell the two parts apart."""
        return self._fitted

    @property
    def overhead_tokens(self) -> float:
        """The fixed cost of one batch in padded tokens' worth of time.

        `inf` when tokens cost nothing measurable (or until `fitted`).
        """
        return self._overhead_tokens

    def _refit(self) -> None:
        mean_x = self._sum_x / self._weight
        mean_y = self._sum_y / self._weight
        var_x = self._sum_xx / self._weight - mean_x * mean_x
        if var_x <= (0.1 * mean_x) ** 2:
            return  # batches too alike to tell the fixed part from the per-token part
        per_token = (self._sum_xy / self._weight - mean_x * mean_y) / var_x
        self._fitted = True
        if per_token * mean_x <= 1e-6 * mean_y:
            self._overhead_tokens = math.inf  # tokens cost nothing measurable: fill batches
            return
        fixed = max(0.0, mean_y - per_token * mean_x)
        self._overhead_tokens = fixed / per_token
