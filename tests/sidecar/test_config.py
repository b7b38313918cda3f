"""Settings: the digest-pin grammar, served names, and the rules between settings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sidecar.config import DigestPins, Settings, served_name_from
from sidecar.errors import ConfigError


def pins_for(value: str, files: list[Path]) -> dict[str, str]:
    """SIDECAR_MODEL_SHA256 as `{file name: digest}` for a model with these weight files."""
    return DigestPins.parse(value).for_files([file.name for file in files])


_DIGEST_A = hashlib.sha256(b"a").hexdigest()
_DIGEST_B = hashlib.sha256(b"b").hexdigest()
_SHARDS = [Path("/m/model-00001-of-00002.safetensors"), Path("/m/model-00002-of-00002.safetensors")]


def test_single_digest_pins_a_single_file_model() -> None:
    files = [Path("/m/model.safetensors")]
    assert pins_for(f"  {_DIGEST_A.upper()}\n", files) == {"model.safetensors": _DIGEST_A}


def test_pairs_pin_every_shard() -> None:
    value = (
        f" model-00002-of-00002.safetensors = {_DIGEST_B} ,"
        f"model-00001-of-00002.safetensors={_DIGEST_A.upper()}"
    )
    assert pins_for(value, _SHARDS) == {
        "model-00001-of-00002.safetensors": _DIGEST_A,
        "model-00002-of-00002.safetensors": _DIGEST_B,
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no digest given"),
        ("   ", "no digest given"),
        (_DIGEST_A, "single digest pins a single-file model, but this model has 2"),
        (f"model-00001-of-00002.safetensors={_DIGEST_A}", "no digest for model-00002"),
        (
            f"model-00001-of-00002.safetensors={_DIGEST_A},"
            f"model-00001-of-00002.safetensors={_DIGEST_A}",
            "pinned twice",
        ),
        (f"model.safetensors={_DIGEST_A}", "'model.safetensors' is not a weight file"),
        (f"={_DIGEST_A}", "is not name=digest"),
        (f"model-00001-of-00002.safetensors={_DIGEST_A},", "'' is not name=digest"),
        (f"model-00001-of-00002.safetensors={_DIGEST_A};x", "not a sha256 digest"),
        ("model-00001-of-00002.safetensors=" + "f" * 63, "not a sha256 digest"),
        ("model-00001-of-00002.safetensors=sha256:" + _DIGEST_A, "not a sha256 digest"),
    ],
)
def test_malformed_pins_are_rejected(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pins_for(value, _SHARDS)


def test_malformed_single_digest_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"'xyz' is not a sha256 digest \(64 hex characters\)"):
        pins_for("xyz", [Path("/m/model.safetensors")])


def test_long_garbage_is_shortened_in_the_message() -> None:
    with pytest.raises(ValueError, match=r"\.\.\.' is not a sha256 digest") as caught:
        pins_for("z" * 500, [Path("/m/model.safetensors")])
    assert len(str(caught.value)) < 150


def test_recorded_is_a_pin_of_its_own() -> None:
    assert DigestPins.parse("recorded").recorded
    settings = Settings.from_env({"SIDECAR_MODEL_SHA256": _DIGEST_A})
    assert settings.model_sha256 == DigestPins(_DIGEST_A, digest=_DIGEST_A)
    assert settings.public()["model_sha256"] == _DIGEST_A


def test_a_malformed_pin_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"SIDECAR_MODEL_SHA256='abc123' is invalid: .*"):
        Settings.from_env({"SIDECAR_MODEL_SHA256": "abc123"})


@pytest.mark.parametrize(
    ("source", "served"),
    [
        ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        ("my model (v2)", "my-model--v2"),
        ("..hidden", "hidden"),
        ("café.bin", "caf-.bin"),
        ("___", "model"),
        ("x" * 300, "x" * 128),
    ],
)
def test_served_names_derived_from_a_source_follow_the_rule(source: str, served: str) -> None:
    assert served_name_from(source) == served
    Settings.from_env({"SIDECAR_MODEL_NAME": served})  # what is derived is what is accepted


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"SIDECAR_BATCH_MIN_SIZE": "8", "SIDECAR_BATCH_MAX_SIZE": "4"}, "SIDECAR_BATCH_MIN_SIZE"),
        ({"SIDECAR_MAX_CLIENT_BATCH": "600"}, "SIDECAR_MAX_CLIENT_BATCH"),
        (
            {"SIDECAR_MAX_INPUT_TOKENS": "1024", "SIDECAR_BATCH_MAX_TOKENS": "512"},
            "SIDECAR_MAX_INPUT_TOKENS",
        ),
        ({"SIDECAR_LOAD_MODE": "mmap", "SIDECAR_DEVICE": "cuda:1"}, "SIDECAR_LOAD_MODE"),
        ({"SIDECAR_PORT": "0"}, "SIDECAR_PORT"),
    ],
)
def test_settings_that_contradict_each_other_are_refused(
    environ: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}=")


@pytest.mark.parametrize(
    "environ",
    [
        {"SIDECAR_BATCH_MIN_SIZE": "4", "SIDECAR_BATCH_MAX_SIZE": "4"},
        {"SIDECAR_MAX_CLIENT_BATCH": "512"},
        {"SIDECAR_MAX_INPUT_TOKENS": "512", "SIDECAR_BATCH_MAX_TOKENS": "512"},
        {"SIDECAR_LOAD_MODE": "mmap", "SIDECAR_DEVICE": "cpu"},
        {"SIDECAR_PORT": "0", "SIDECAR_UDS": "/tmp/s.sock"},
    ],
)
def test_settings_at_the_bounds_are_accepted(environ: dict[str, str]) -> None:
    Settings.from_env(environ)


def test_max_client_batch_follows_a_lower_queue_limit_unless_set() -> None:
    assert Settings.from_env({}).max_client_batch == 256
    assert Settings.from_env({"SIDECAR_QUEUE_MAX": "8"}).max_client_batch == 8
    assert Settings.from_env({"SIDECAR_QUEUE_MAX": "1000"}).max_client_batch == 256
    explicit = {"SIDECAR_QUEUE_MAX": "8", "SIDECAR_MAX_CLIENT_BATCH": "16"}
    with pytest.raises(ConfigError, match=r"MAX_CLIENT_BATCH='16'.*SIDECAR_QUEUE_MAX \(8\)"):
        Settings.from_env(explicit)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SIDECAR_KEEPALIVE_TIMEOUT_S", "0"), ("SIDECAR_MAX_CONNECTIONS", "none")],
)
def test_transport_limits_are_validated(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})


@pytest.mark.parametrize("value", ["-1", "many", "1.5", str((1 << 24) + 1)])
def test_cache_size_is_validated(value: str) -> None:
    with pytest.raises(
        ConfigError, match=r"SIDECAR_CACHE_MAX_ITEMS=.*an integer from 0 to 16777216"
    ):
        Settings.from_env({"SIDECAR_CACHE_MAX_ITEMS": value})


def test_the_cache_is_off_unless_sized() -> None:
    assert Settings.from_env({}).cache_max_items == 0
    assert Settings.from_env({"SIDECAR_CACHE_MAX_ITEMS": "0"}).cache_max_items == 0
    assert Settings.from_env({"SIDECAR_CACHE_MAX_ITEMS": "10000"}).cache_max_items == 10000
