"""The soak benchmark's figure: growth of resident memory over the second half of a run."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.soak import growth


def samples(rss: list[float], every_s: float = 5.0) -> list[dict[str, Any]]:
    return [{"t_s": i * every_s, "VmRSS": value} for i, value in enumerate(rss)]


def test_a_plateau_after_a_rise_is_no_growth() -> None:
    # Warm-up growth in the first half does not count; the second half is flat, with noise.
    rss = [400 + 10 * i for i in range(20)] + [600 + (-1) ** i for i in range(20)]
    memory = growth(samples(rss))
    assert memory["plateau_rss_mb"] == pytest.approx(600, abs=1)
    assert abs(memory["second_half_growth_pct"]) < 0.5
    assert memory["peak_rss_mb"] == 601


def test_steady_growth_in_the_second_half_is_reported_as_such() -> None:
    rss = [500 + 2 * i for i in range(41)]  # 2 MB per 5 s sample
    memory = growth(samples(rss))
    assert memory["second_half_slope_mb_per_min"] == pytest.approx(24, rel=1e-6)
    assert memory["second_half_growth_pct"] == pytest.approx(100 * 40 / 540, rel=1e-3)
