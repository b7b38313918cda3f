"""Tests of SHA-256 pins: the digests a hub cache records, verification on load.

The grammar of SIDECAR_MODEL_SHA256 is the sidecar's (tests/sidecar/test_config.py)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loaders import (
    CorruptWeightsError,
    DigestMismatchError,
    load_weights,
    recorded_digests,
    resolve_source,
)

_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
_ZERO = "0" * 64


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights(directory: Path, *, shards: int) -> list[Path]:
    """Write `shards` safetensors files of mixed dtypes and, when sharded, their index."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(1)
    paths = []
    weight_map = {}
    for shard in range(shards):
        name = (
            "model.safetensors"
            if shards == 1
            else f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        )
        tensors = {
            f"layer.{shard}.weight": torch.randn(64, 33, generator=generator),
            f"layer.{shard}.bias": torch.randn(7, generator=generator).half(),
            f"layer.{shard}.ids": torch.arange(5, dtype=torch.int64),
        }
        save_file(tensors, directory / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        paths.append(directory / name)
    if shards > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    (directory / "config.json").write_text("{}")
    return paths


def _hub_cache(cache: Path, repo_id: str, *, shards: int = 1) -> Path:
    """Lay out a repo as the hub client does: LFS blobs named by their sha256, git blobs by sha1."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    staged = storage / "staged"
    _weights(staged, shards=shards)
    snapshot = storage / "snapshots" / _COMMIT
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir()
    for file in sorted(staged.iterdir()):
        data = file.read_bytes()
        lfs = file.suffix == ".safetensors"
        blob = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(data).hexdigest()
        file.rename(storage / "blobs" / blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob))
    staged.rmdir()
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(_COMMIT)
    return snapshot


@pytest.mark.parametrize("shards", [1, 3])
def test_hub_cache_records_the_sha256_of_each_weight_file(tmp_path: Path, shards: int) -> None:
    _hub_cache(tmp_path / "hub", "org/model", shards=shards)
    source = resolve_source("hf://org/model", cache_dir=tmp_path / "hub", offline=True)
    recorded = recorded_digests(source)
    assert recorded == {path.name: _sha256(path) for path in source.weight_files}
    assert len(recorded) == shards
    tensors, stats = load_weights(source.weight_files, expected_sha256=recorded)
    assert stats.num_verified_files == shards
    assert len(tensors) == 3 * shards


def test_local_directory_records_nothing(tmp_path: Path) -> None:
    _weights(tmp_path / "model", shards=2)
    assert recorded_digests(resolve_source(str(tmp_path / "model"))) == {}


def test_symlink_to_a_blob_not_named_by_a_digest_records_nothing(tmp_path: Path) -> None:
    (real,) = _weights(tmp_path / "real", shards=1)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").symlink_to(real)
    assert recorded_digests(resolve_source(str(tmp_path / "model"))) == {}


def test_blob_changed_in_the_cache_fails_verification(tmp_path: Path) -> None:
    _hub_cache(tmp_path / "hub", "org/model", shards=2)
    source = resolve_source("hf://org/model", cache_dir=tmp_path / "hub", offline=True)
    recorded = recorded_digests(source)
    victim = source.weight_files[1]
    original = victim.read_bytes()
    # One flipped bit in the last tensor's data: the header stays valid, only the digest can tell.
    victim.resolve().write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(DigestMismatchError) as caught:
        load_weights(source.weight_files, expected_sha256=recorded)
    error = caught.value
    assert isinstance(error, CorruptWeightsError)
    assert error.path == victim
    assert error.tensor is None
    assert (error.expected, error.actual) == (recorded[victim.name], _sha256(victim))
    message = str(error)
    assert victim.name in message
    assert error.expected in message
    assert error.actual in message
    assert str(victim.parent) not in message


def test_digest_covers_the_header(tmp_path: Path) -> None:
    (path,) = _weights(tmp_path, shards=1)
    pinned = _sha256(path)
    tensors = load_file(path)
    # The same tensors with other metadata: identical data region, different header bytes.
    save_file(tensors, path, metadata={"format": "np"})
    with pytest.raises(DigestMismatchError):
        load_weights([path], expected_sha256={path.name: pinned})


@pytest.mark.parametrize(("num_threads", "chunk_bytes"), [(1, 1 << 20), (4, 100), (8, 7)])
def test_pinned_files_are_hashed_from_memory_not_read_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, num_threads: int, chunk_bytes: int
) -> None:
    paths = _weights(tmp_path, shards=3)
    pins = {path.name: _sha256(path).upper() for path in paths}
    read_bytes = 0
    real_pread, real_preadv = os.pread, os.preadv

    def counting_pread(fd: int, size: int, offset: int) -> bytes:
        nonlocal read_bytes
        data = real_pread(fd, size, offset)
        read_bytes += len(data)
        return data

    def counting_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        nonlocal read_bytes
        count = real_preadv(fd, buffers, offset)
        read_bytes += count
        return count

    monkeypatch.setattr(os, "pread", counting_pread)
    monkeypatch.setattr(os, "preadv", counting_preadv)
    _, stats = load_weights(
        paths,
        num_threads=num_threads,
        chunk_bytes=chunk_bytes,
        expected_sha256=pins,
        mapped=False,  # the eager read path: every byte read exactly once
    )
    assert stats.num_verified_files == 3
    assert read_bytes == sum(path.stat().st_size for path in paths)


def test_only_named_files_are_verified(tmp_path: Path) -> None:
    paths = _weights(tmp_path, shards=2)
    _, stats = load_weights(paths, expected_sha256={paths[1].name: _sha256(paths[1])})
    assert stats.num_verified_files == 1
    _, stats = load_weights(paths)
    assert stats.num_verified_files == 0


def test_file_without_data_is_verified(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    save_file({"nothing": torch.zeros(0)}, path)
    _, stats = load_weights([path], expected_sha256={path.name: _sha256(path)})
    assert stats.num_verified_files == 1
    with pytest.raises(DigestMismatchError):
        load_weights([path], expected_sha256={path.name: _ZERO})


@pytest.mark.parametrize(
    ("pins", "message"),
    [
        ({"other.safetensors": _ZERO}, "matches no file"),
        ({"model.safetensors": "abc"}, "not a sha256 digest"),
        ({"model.safetensors": "g" * 64}, "not a sha256 digest"),
    ],
)
def test_bad_pins_are_rejected_before_any_read(
    tmp_path: Path, pins: dict[str, str], message: str
) -> None:
    paths = _weights(tmp_path, shards=1)
    calls: list[tuple[int, int]] = []
    with pytest.raises(ValueError, match=message):
        load_weights(paths, expected_sha256=pins, progress=lambda *a: calls.append(a))
    assert calls == []


def test_pin_matching_two_files_is_ambiguous(tmp_path: Path) -> None:
    first = _weights(tmp_path / "a", shards=1)[0]
    second = tmp_path / "b.safetensors"
    save_file({"other": torch.ones(1)}, second)
    renamed = tmp_path / "b" / "model.safetensors"
    renamed.parent.mkdir()
    second.rename(renamed)
    with pytest.raises(ValueError, match="matches 2 files"):
        load_weights([first, renamed], expected_sha256={"model.safetensors": _sha256(first)})
