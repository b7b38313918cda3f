"""The versioned model root: discovery, order, and the desired state's typed errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loaders import (
    DesiredState,
    Share,
    VersionsFileError,
    is_model_root,
    listed_digests,
    read_desired,
    scan_versions,
    version_order,
)


def test_versions_sort_numbers_as_numbers() -> None:
    names = ["10", "9", "1.10", "1.9", "v2", "v10", "a"]
    assert sorted(names, key=version_order) == ["1.9", "1.10", "9", "10", "a", "v2", "v10"]


def test_a_root_lists_version_directories_and_ignores_dot_dirs(tmp_path: Path) -> None:
    for name in ("7", "10", "8", ".tmp-11", "bad name"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("a file is no version")
    assert scan_versions(tmp_path) == ["7", "8", "10"]
    assert is_model_root(tmp_path)


def test_a_snapshot_is_not_a_root_even_with_subdirectories(tmp_path: Path) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "config.json").write_text("{}")
    assert not is_model_root(tmp_path)
    assert not is_model_root(tmp_path / "missing")


def test_an_empty_directory_is_not_a_root_but_one_with_a_desired_state_is(tmp_path: Path) -> None:
    assert not is_model_root(tmp_path)
    (tmp_path / "versions.json").write_text('{"stable": "7"}')
    assert is_model_root(tmp_path)


def test_the_desired_state_reads_every_key(tmp_path: Path) -> None:
    document = {
        "stable": "7",
        "canary": {"version": "8", "percent": 10},
        "shadow": {"version": "8"},
        "resident": 2,
    }
    (tmp_path / "versions.json").write_text(json.dumps(document))
    text, desired = read_desired(tmp_path)
    assert text is not None
    assert desired == DesiredState("7", Share("8", 10.0), Share("8", 100.0), 2)
    assert desired.named() == ["7", "8"]
    assert DesiredState.parse(desired.public()) == desired
    assert read_desired(tmp_path / "none") == (None, None)


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ("[]", "must be a JSON object"),
        ("{", "is not JSON"),
        ('{"stable": "/models/x"}', "'stable' must be a version name"),
        ('{"stable": "http://evil/x"}', "'stable' must be a version name"),
        ('{"stable": ".tmp-8"}', "'stable' must be a version name"),
        ('{"stable": 7}', "'stable' must be a version name"),
        ('{"canary": {"version": "8", "percent": 101}}', "'canary.percent' must be a number"),
        ('{"canary": {"version": "8", "percent": true}}', "'canary.percent' must be a number"),
        ('{"canary": "8"}', "'canary' must be an object"),
        ('{"shadow": {"version": "8", "url": "x"}}', "'shadow' must be an object"),
        ('{"resident": 0}', "'resident' must be an integer from 1 to 16"),
        ('{"path": "/etc"}', "unknown keys ['path']"),
    ],
)
def test_a_bad_desired_state_is_a_typed_error_saying_what(document: str, says: str) -> None:
    with pytest.raises(VersionsFileError) as caught:
        DesiredState.decode(document.encode())
    assert says in str(caught.value)


def test_a_versions_sha256sums_pins_its_weight_files(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    assert listed_digests(tmp_path, [weights]) is None
    (tmp_path / "SHA256SUMS").write_text("A" * 64 + " *model.safetensors\n\n" + "b" * 64 + "  x\n")
    assert listed_digests(tmp_path, [weights]) == {"model.safetensors": "a" * 64}
    (tmp_path / "SHA256SUMS").write_text("b" * 64 + "  other.safetensors\n")
    with pytest.raises(ValueError, match=r"lists no digest for model\.safetensors"):
        listed_digests(tmp_path, [weights])
    (tmp_path / "SHA256SUMS").write_text("nothex  model.safetensors\n")
    with pytest.raises(ValueError, match="is not a sha256 digest"):
        listed_digests(tmp_path, [weights])
