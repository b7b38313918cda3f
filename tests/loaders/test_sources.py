"""Tests of model source resolution: local paths and a hand-built Hugging Face cache, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loaders import ModelSource, ModelSourceError, load_weights, pull, resolve_source

_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _model_dir(directory: Path, *, shards: int = 0) -> Path:
    """Write a tiny model directory: config, tokenizer, and one file or `shards` shards."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"model_type": "bert"}')
    (directory / "tokenizer.json").write_text("{}")
    tensors = {f"layer.{index}.weight": torch.full((2,), float(index)) for index in range(4)}
    if not shards:
        save_file(tensors, directory / "model.safetensors")
        return directory
    weight_map = {}
    for shard in range(shards):
        name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {
            key: value
            for index, (key, value) in enumerate(tensors.items())
            if index % shards == shard
        }
        save_file(part, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    # Reversed so that shard order cannot come from the order of the map.
    reversed_map = dict(reversed(weight_map.items()))
    index = {"metadata": {"total_size": 32}, "weight_map": reversed_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def _hub_cache(cache: Path, repo_id: str, *, shards: int = 0) -> Path:
    """Lay out `repo_id` as the hub client caches it: blobs, snapshot symlinks and refs/main."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    staged = _model_dir(storage / "staged", shards=shards)
    snapshot = storage / "snapshots" / _COMMIT
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir()
    for index, file in enumerate(sorted(staged.iterdir())):
        blob = storage / "blobs" / f"{index:040x}"
        file.rename(blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    staged.rmdir()
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(_COMMIT)
    return snapshot


def test_local_directory(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path / "minilm")
    source = resolve_source(str(directory))
    assert source == ModelSource(
        spec=str(directory),
        directory=directory,
        weight_files=(directory / "model.safetensors",),
        name="minilm",
        revision=None,
    )


def test_relative_directory_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _model_dir(tmp_path / "minilm")
    monkeypatch.chdir(tmp_path)
    source = resolve_source("minilm/")
    assert source.spec == "minilm/"
    assert source.directory == tmp_path / "minilm"
    assert source.name == "minilm"


def test_single_file(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path / "m")
    (directory / "model.safetensors").rename(directory / "encoder.safetensors")
    source = resolve_source(str(directory / "encoder.safetensors"))
    assert source.directory == directory
    assert source.weight_files == (directory / "encoder.safetensors",)
    assert source.name == "encoder"
    assert source.revision is None


def test_sharded_directory_lists_shards_in_order(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path / "big", shards=3)
    source = resolve_source(str(directory))
    assert [path.name for path in source.weight_files] == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]
    tensors, _ = load_weights(source.weight_files)
    assert sorted(tensors) == [f"layer.{index}.weight" for index in range(4)]


def _error(spec: str, *, cache_dir: Path | None = None, offline: bool = False) -> str:
    with pytest.raises(ModelSourceError) as caught:
        resolve_source(spec, cache_dir=cache_dir, offline=offline)
    assert caught.value.spec == spec
    assert repr(spec) in str(caught.value)
    return str(caught.value)


def test_sharded_directory_with_a_missing_shard(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path / "big", shards=3)
    (directory / "model-00002-of-00003.safetensors").unlink()
    assert "model-00002-of-00003.safetensors" in _error(str(directory))


@pytest.mark.parametrize(
    "index",
    [
        "not json",
        "[]",
        '{"weight_map": {}}',
        '{"weight_map": {"w": 3}}',
        '{"weight_map": {"w": "../outside.safetensors"}}',
        '{"weight_map": {"w": "pytorch_model-00001.bin"}}',
    ],
)
def test_bad_index_is_refused(tmp_path: Path, index: str) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(index)
    assert "model.safetensors.index.json" in _error(str(tmp_path))


@pytest.mark.parametrize("pickled", ["pytorch_model.bin", "pytorch_model.bin.index.json"])
def test_pickle_checkpoint_is_refused(tmp_path: Path, pickled: str) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / pickled).write_bytes(b"\x80\x02}q\x00.")
    assert "pickle checkpoints are refused" in _error(str(tmp_path))


def test_pickle_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"\x80\x02}q\x00.")
    assert "pickle" in _error(str(tmp_path / "model.pt"))


def test_directory_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert "not a model directory" in _error(str(tmp_path))


@pytest.mark.parametrize("spec", ["", "/nonexistent/model", "missing.safetensors"])
def test_missing_local_source(spec: str) -> None:
    _error(spec)


@pytest.mark.parametrize("revision", ["", "@main", f"@{_COMMIT}"])
def test_hub_spec_resolves_offline_from_the_cache(tmp_path: Path, revision: str) -> None:
    snapshot = _hub_cache(tmp_path / "hub", "sentence-transformers/all-MiniLM-L6-v2")
    spec = f"hf://sentence-transformers/all-MiniLM-L6-v2{revision}"
    source = resolve_source(spec, cache_dir=tmp_path / "hub", offline=True)
    assert source == ModelSource(
        spec=spec,
        directory=snapshot,
        weight_files=(snapshot / "model.safetensors",),
        name="all-MiniLM-L6-v2",
        revision=_COMMIT,
    )
    tensors, _ = load_weights(source.weight_files)
    assert torch.equal(tensors["layer.3.weight"], torch.full((2,), 3.0))


def test_sharded_hub_snapshot(tmp_path: Path) -> None:
    snapshot = _hub_cache(tmp_path / "hub", "org/big", shards=2)
    source = resolve_source("hf://org/big", cache_dir=tmp_path / "hub", offline=True)
    assert source.weight_files == (
        snapshot / "model-00001-of-00002.safetensors",
        snapshot / "model-00002-of-00002.safetensors",
    )


def test_hub_spec_not_in_the_cache_while_offline(tmp_path: Path) -> None:
    _hub_cache(tmp_path / "hub", "org/present")
    message = _error("hf://org/absent", cache_dir=tmp_path / "hub", offline=True)
    assert "not in the Hugging Face cache" in message


def test_hub_revision_not_in_the_cache_while_offline(tmp_path: Path) -> None:
    _hub_cache(tmp_path / "hub", "org/present")
    _error("hf://org/present@v2", cache_dir=tmp_path / "hub", offline=True)


def test_hub_snapshot_without_safetensors(tmp_path: Path) -> None:
    snapshot = _hub_cache(tmp_path / "hub", "org/old")
    (snapshot / "model.safetensors").unlink()
    message = _error("hf://org/old", cache_dir=tmp_path / "hub", offline=True)
    assert "not a model directory" in message


@pytest.mark.parametrize(
    "spec", ["hf://", "hf://org/name/extra", "hf://org/name@", "hf:///name", "hf://org/"]
)
def test_malformed_hub_spec(spec: str) -> None:
    assert "hf://org/name[@revision]" in _error(spec, offline=True)


def test_hub_spec_with_invalid_repo_id(tmp_path: Path) -> None:
    _error("hf://org/bad name", cache_dir=tmp_path, offline=True)


def test_pull_of_a_local_source_only_validates(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path / "minilm")
    assert pull(str(directory)) == resolve_source(str(directory))
    with pytest.raises(ModelSourceError):
        pull(str(tmp_path / "absent"))
