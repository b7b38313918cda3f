"""Tests of the throttled progress log, driven by a fake clock: no sleeps."""

from __future__ import annotations

import logging

import pytest

from loaders.progress import ProgressLog

_GB = 1_000_000_000


class _Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "loaders.progress"]


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="loaders.progress")
    return caplog


def test_a_load_shorter_than_the_interval_logs_nothing(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock(100.0)
    log = ProgressLog(10 * _GB, started=100.0, clock=clock)
    for step in range(1, 10):
        clock.now = 100.0 + step * 0.1
        log.update(step * _GB)
    assert _lines(caplog_info) == []


def test_lines_come_at_most_once_per_interval(caplog_info: pytest.LogCaptureFixture) -> None:
    clock = _Clock(0.0)
    log = ProgressLog(100 * _GB, started=0.0, clock=clock)
    # 1000 chunks over 5 s of fake time: one line per second, from the first second on.
    logged_at: list[float] = []
    for step in range(1, 1001):
        clock.now = step * 0.005
        before = len(_lines(caplog_info))
        log.update(step * 50_000_000)
        if len(_lines(caplog_info)) > before:
            logged_at.append(clock.now)
    assert logged_at == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])


def test_the_interval_counts_from_the_last_line_not_a_fixed_grid(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock(0.0)
    log = ProgressLog(10 * _GB, started=0.0, clock=clock)
    # A chunk that lands late (slow storage) logs at once; the next line is a full interval later.
    for now, logs in [(3.5, True), (4.0, False), (4.4, False), (4.5, True), (5.4, False)]:
        clock.now = now
        before = len(_lines(caplog_info))
        log.update(_GB)
        assert len(_lines(caplog_info)) - before == int(logs), now


def test_a_line_says_bytes_done_rate_and_time_left(caplog_info: pytest.LogCaptureFixture) -> None:
    clock = _Clock(10.0)
    log = ProgressLog(8 * _GB, started=10.0, clock=clock)
    clock.now = 12.0
    log.update(2 * _GB)
    assert _lines(caplog_info) == [
        "loading weights: 2.00 of 8.00 GB (25%) in 2.0 s, 1.00 GB/s, ETA 6.0 s"
    ]


def test_nothing_done_yet_has_no_eta(caplog_info: pytest.LogCaptureFixture) -> None:
    clock = _Clock(5.0)
    log = ProgressLog(_GB, started=0.0, clock=clock)
    log.update(0)
    (line,) = _lines(caplog_info)
    assert line.endswith("0.00 GB/s, ETA unknown")


def test_completion_is_left_to_the_summary_line(caplog_info: pytest.LogCaptureFixture) -> None:
    clock = _Clock(30.0)
    log = ProgressLog(_GB, started=0.0, clock=clock)
    log.update(_GB)
    assert _lines(caplog_info) == []
