"""The settings of model versions: defaults, values, and refusals naming the variable."""

from __future__ import annotations

import pytest

from sidecar.config import Settings
from sidecar.errors import ConfigError
from sidecar.versions_settings import VersionsSettings


def test_defaults_and_values() -> None:
    assert Settings.from_env({}).versions == VersionsSettings()
    versions = Settings.from_env(
        {
            "SIDECAR_MODEL_POLL_S": "0",
            "SIDECAR_SWAP_POLICY": "Resource",
            "SIDECAR_VERSIONS_MAX_BYTES": "1000000",
            "SIDECAR_CANARY_MAX_ERROR_RATIO": "0.05",
            "SIDECAR_CANARY_WINDOW": "50",
            "SIDECAR_ADMIN_UDS": "/run/admin.sock",
            "SIDECAR_VERSIONS_FILE": "/etc/versions/versions.json",
        }
    ).versions
    assert versions == VersionsSettings(
        0.0, "resource", 1_000_000, 0.05, 50, "/run/admin.sock", "/etc/versions/versions.json"
    )
    assert Settings.from_env({}).public()["versions"]["swap_policy"] == "availability"


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("SIDECAR_MODEL_POLL_S", "-1", "a number from 0 to 86400"),
        ("SIDECAR_SWAP_POLICY", "fastest", "one of availability, resource"),
        ("SIDECAR_VERSIONS_MAX_BYTES", "lots", "an integer from 0"),
        ("SIDECAR_CANARY_MAX_ERROR_RATIO", "2", "a number from 0 to 1"),
        ("SIDECAR_CANARY_WINDOW", "1", "an integer from 10"),
        ("SIDECAR_ADMIN_UDS", "/" + "x" * 200, "a socket path of at most 107 bytes"),
    ],
)
def test_a_bad_value_names_the_variable(variable: str, value: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.variable == variable and accepted in str(caught.value)


def test_the_admin_socket_is_not_the_inference_socket() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SIDECAR_UDS": "/run/s.sock", "SIDECAR_ADMIN_UDS": "/run/s.sock"})
    assert caught.value.variable == "SIDECAR_ADMIN_UDS"
