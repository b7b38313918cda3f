"""Batching bounds by device: what the settings leave unset, the device decides."""

from __future__ import annotations

import pytest

from sidecar.config import Settings
from sidecar.errors import ConfigError
from sidecar.serving.engine import batch_config


def test_size_and_padding_bounds_default_by_device() -> None:
    settings = Settings.from_env({})
    cpu, cuda = batch_config(settings, "cpu", 256), batch_config(settings, "cuda:0", 256)
    assert (cpu.max_size, cpu.max_padding) == (32, 0.5)
    assert (cuda.max_size, cuda.max_padding) == (256, 1.0)
    assert cpu.max_tokens == cuda.max_tokens == 16384


def test_bounds_that_are_set_hold_on_every_device() -> None:
    settings = Settings.from_env(
        {"SIDECAR_BATCH_MAX_SIZE": "64", "SIDECAR_BATCH_MAX_PADDING": "0.2"}
    )
    for device in ("cpu", "cuda:1"):
        bounds = batch_config(settings, device, 256)
        assert (bounds.max_size, bounds.max_padding) == (64, 0.2)


def test_a_min_size_above_the_cpu_default_needs_a_max_size() -> None:
    with pytest.raises(ConfigError, match=r"at most SIDECAR_BATCH_MAX_SIZE \(32, its default"):
        Settings.from_env({"SIDECAR_BATCH_MIN_SIZE": "64"})
    Settings.from_env({"SIDECAR_BATCH_MIN_SIZE": "64", "SIDECAR_BATCH_MAX_SIZE": "128"})
