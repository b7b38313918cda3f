"""SIDECAR_GEN_*: defaults, values, and the ConfigError of a bad one."""

from __future__ import annotations

import pytest

from sidecar.config import Settings
from sidecar.errors import ConfigError
from sidecar.generation_settings import GenerationSettings


def test_defaults_and_values() -> None:
    assert Settings.from_env({}).generation == GenerationSettings()
    settings = Settings.from_env(
        {
            "SIDECAR_GEN_MAX_SEQS": "4",
            "SIDECAR_GEN_MAX_MODEL_LEN": "2048",
            "SIDECAR_GEN_KV_FRACTION": "0.5",
            "SIDECAR_GEN_MAX_BATCH_TOKENS": "256",
        }
    ).generation
    assert settings == GenerationSettings(4, 2048, 0.5, 256)
    assert Settings.from_env({}).public()["generation"]["max_seqs"] == 32


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SIDECAR_GEN_MAX_SEQS", "0"),
        ("SIDECAR_GEN_MAX_MODEL_LEN", "lots"),
        ("SIDECAR_GEN_KV_FRACTION", "1.5"),
        ("SIDECAR_GEN_MAX_BATCH_TOKENS", "8"),
        ("SIDECAR_GEN_MAX_BATCH_TOKENS", "32"),  # not more than the 32 sequences
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
