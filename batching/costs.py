"""What a batch costs on this device: a floor up to a knee, then a part per padded token."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

# Knees the fit tries, in padded tokens: 0 (a straight line) and steps of x sqrt(2) from 16 to
# about a million, fine enough that the nearest one sits within 20% of the device's own.
KNEES = (0.0, *(16 * 2 ** (step / 2) for step in range(33)))


class BatchCost:
    """Fits `seconds = floor + per_token x max(0, padded_tokens - knee)` to the batches that ran.

    A GPU pass costs about the same up to a knee of thousands of tokens (launches and weight
    reads dominate), then grows with its tokens; a CPU pass grows from the first token (knee
    about 0: `floor + per_token x padded`). A straight line fits the GPU badly: padding looks
    free far past the knee, or dear below it. So for each knee in `KNEES` the fit is a straight
    line in `max(0, padded - knee)`, and the knee kept is the smallest whose line leaves about
    the least unexplained variance (within 10%: noise alone would otherwise pick some small
    knee on a device without one).

    Each line is an exponentially weighted least-squares fit, so it follows the device as load
    and clocks change, on relative errors (each batch weighted by 1 / seconds squared): on a
    shared machine noise scales with a batch's time, and an unweighted fit lets the noise of
    large batches swamp the fixed part that only small ones show (measured on the demo model: 4
    tokens unweighted against 46 weighted, where single-item passes put it at about 45).

    Warm-up passes given to `seed` stand in for batches until real ones can be fitted alone
    (`min_batches` of them, of sizes different enough); from then on only real batches count.
    Decay alone would not retire them: a warm-up pass of 16k tokens outweighs any number of
    real batches of a few hundred in a least-squares fit long after its weight has decayed.

    Batch forming needs the fit in padded tokens: `overhead_tokens` (`floor / per_token`: what
    one more batch costs) and `knee_tokens` (how many padded tokens a batch holds for its floor).

    Args:
        decay: weight kept by older batches at each new one (0.95: about the last 20 batches).
        min_batches: real batches seen before a fit of them alone is trusted.
    """

    def __init__(self, decay: float = 0.95, min_batches: int = 8) -> None:
        self._min_batches = min_batches
        self._seen = 0
        self._real = _HingeFit(decay)
        self._warm: _HingeFit | None = None  # warm-up passes and the real batches since
        self._overhead_tokens = math.inf
        self._knee_tokens = 0.0
        self._fitted = False

    def observe(self, padded_tokens: int, seconds: float) -> None:
        """Add one batch's padded tokens and forward-pass time."""
        if padded_tokens <= 0 or seconds <= 0:
            return
        self._real.add(padded_tokens, seconds)
        if self._warm is not None:
            self._warm.add(padded_tokens, seconds)
        self._seen += 1
        solved = self._real.solve() if self._seen >= self._min_batches else None
        if solved is not None:
            self._warm = None
        elif self._warm is not None:
            solved = self._warm.solve()
        self._use(solved)

    def seed(self, samples: Iterable[tuple[int, float]]) -> None:
        """Add timed warm-up passes (padded tokens, seconds) and fit them at once.

        The fit exists from then on if the passes span sizes enough to tell the floor from the
        per-token part: say two passes each at six sizes from one short item to a full batch.
        """
        warm = self._warm or copy.deepcopy(self._real)
        for padded_tokens, seconds in samples:
            if padded_tokens > 0 and seconds > 0:
                warm.add(padded_tokens, seconds)
        self._warm = warm
        self._use(warm.solve())

    @property
    def fitted(self) -> bool:
        """Whether batches (or warm-up passes) of sizes different enough have run to tell the
        floor from the per-token part."""
        return self._fitted

    @property
    def overhead_tokens(self) -> float:
        """The floor, what the smallest batch costs, in padded tokens' worth of time beyond the
        knee: so also what one more batch costs.

        `inf` when tokens cost nothing measurable (or until `fitted`).
        """
        return self._overhead_tokens

    @property
    def knee_tokens(self) -> float:
        """Padded tokens a batch holds for the floor alone (0 on a CPU; 0 until `fitted`)."""
        return self._knee_tokens

    def _use(self, solved: tuple[float, float] | None) -> None:
        if solved is not None:
            self._fitted = True
            self._overhead_tokens, self._knee_tokens = solved


class _HingeFit:
    """Decayed weighted sums of (padded tokens, seconds), and the hinge line they fit best."""

    def __init__(self, decay: float) -> None:
        self._decay = decay
        self._weight = self._sum_y = self._sum_yy = 0.0
        self._knees = [_KneeSums(knee) for knee in KNEES]

    def add(self, padded_tokens: int, seconds: float) -> None:
        keep, weight = self._decay, 1.0 / (seconds * seconds)
        self._weight = self._weight * keep + weight
        self._sum_y = self._sum_y * keep + weight * seconds
        self._sum_yy = self._sum_yy * keep + weight * seconds * seconds
        for sums in self._knees:
            sums.add(padded_tokens, seconds, weight, keep)

    def solve(self) -> tuple[float, float] | None:
        """(overhead tokens, knee tokens); None when the batches are too alike to tell."""
        if self._weight <= 0:
            return None
        mean_y = self._sum_y / self._weight
        var_y = self._sum_yy / self._weight - mean_y * mean_y
        fits: list[tuple[float, float, float, float]] = []  # residual, knee, floor, per_token
        for sums in self._knees:
            if sums.above < 1.5:
                continue  # fewer than two batches beyond this knee: no slope to fit
            mean_z = sums.sum_z / self._weight
            var_z = sums.sum_zz / self._weight - mean_z * mean_z
            if var_z <= (0.1 * mean_z) ** 2:
                continue  # batches too alike to tell the floor from the per-token part
            covariance = sums.sum_zy / self._weight - mean_z * mean_y
            per_token = covariance / var_z
            residual = var_y - covariance * covariance / var_z
            fits.append((residual, sums.knee, mean_y - per_token * mean_z, per_token))
        if not fits:
            return None
        least = min(fit[0] for fit in fits)
        close = least + 0.1 * abs(least) + 1e-12 * mean_y * mean_y
        _, knee, floor, per_token = next(fit for fit in fits if fit[0] <= close)
        mean_x = self._knees[0].sum_z / self._weight
        if per_token * mean_x <= 1e-6 * mean_y:
            return math.inf, 0.0  # tokens cost nothing measurable: fill batches
        return max(0.0, floor) / per_token, knee


class _KneeSums:
    """The sums one knee's line needs: z = max(0, padded_tokens - knee)."""

    def __init__(self, knee: float) -> None:
        self.knee = knee
        self.above = 0.0  # batches with padded tokens beyond the knee (decayed count)
        self.sum_z = self.sum_zz = self.sum_zy = 0.0

    def add(self, padded_tokens: int, seconds: float, weight: float, keep: float) -> None:
        z = max(0.0, padded_tokens - self.knee)
        self.above = self.above * keep + (z > 0)
        self.sum_z = self.sum_z * keep + weight * z
        self.sum_zz = self.sum_zz * keep + weight * z * z
        self.sum_zy = self.sum_zy * keep + weight * z * seconds
