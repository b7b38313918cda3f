"""Resolution of model source specs to a snapshot directory and its safetensors files.

A spec is a local directory, a single ``.safetensors`` file, or ``hf://org/name[@revision]``, which
is resolved through the Hugging Face cache. Only safetensors weights are ever selected: pickle
checkpoints (``pytorch_model.bin`` and the like) are refused, and never downloaded from the hub.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from loaders.errors import ModelSourceError

__all__ = ["HUB_SCHEME", "ModelSource", "pull", "resolve_source"]

logger = logging.getLogger(__name__)

HUB_SCHEME = "hf://"
_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"
_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")

# Configs, tokenizers and sentence-transformers modules (1_Pooling/, 2_Normalize/, ...) are small
# JSON or text files; weights are safetensors only.
_HUB_ALLOW_PATTERNS = (
    "*.json",
    "*.txt",
    "*.safetensors",
    "*.model",
    "*.tiktoken",
    "tokenizer*",
    "1_Pooling/*",
)
# Belt and braces: nothing that deserializes code (pickle) or that we cannot load is fetched.
_HUB_IGNORE_PATTERNS = (
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.pkl",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.ot",
    "*.tflite",
)

# Failures of the hub client, most specific first, with what the operator should read.
_HUB_FAILURES: tuple[tuple[type[Exception], str], ...] = (
    (LocalEntryNotFoundError, "not in the Hugging Face cache and the hub cannot be used"),
    (GatedRepoError, "the repository is gated: pass a token with access to it"),
    (RepositoryNotFoundError, "repository not found on the hub (or private: pass a token)"),
    (RevisionNotFoundError, "revision not found in the repository"),
    (HFValidationError, "not a valid repository id or revision"),
    (HfHubHTTPError, "the hub request failed: {error}"),
    (Exception, "cannot be fetched: {error}"),
)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: where its files are and which safetensors files to load."""

    spec: str
    directory: Path
    weight_files: tuple[Path, ...]
    name: str
    revision: str | None


def resolve_source(
    spec: str,
    *,
    cache_dir: Path | None = None,
    offline: bool = False,
    token: str | None = None,
) -> ModelSource:
    """Resolve a model source spec to its snapshot directory and weight files.

    Args:
        spec: a local directory, a ``.safetensors`` file, or ``hf://org/name[@revision]``.
        cache_dir: the Hugging Face hub cache; None means the hub client's default.
        offline: resolve hub specs from the cache only, with no network access.
        token: a Hugging Face token for private or gated repositories.

    Returns:
        The resolved source; weight files are in shard order.

    Raises:
        ModelSourceError: the spec cannot be resolved to safetensors weights.
    """
    if not spec.startswith(HUB_SCHEME):
        return _resolve_local(spec)
    repo_id, revision = _parse_hub_spec(spec)
    directory = _snapshot(spec, repo_id, revision, cache_dir, offline=offline, token=token)
    source = ModelSource(
        spec=spec,
        directory=directory,
        weight_files=_weight_files(spec, directory),
        name=repo_id.rpartition("/")[2],
        # snapshot_download returns <cache>/models--org--name/snapshots/<commit hash>.
        revision=directory.name,
    )
    logger.info("resolved %s to revision %s", spec, source.revision)
    return source


def pull(spec: str, *, cache_dir: Path | None = None, token: str | None = None) -> ModelSource:
    """Pre-fetch a hub model into the cache, then resolve it from the cache alone.

    The hub client locks the files it writes, so several processes may pull into one shared cache
    at once; it shows progress bars on the terminal. A local spec is only validated.

    Args:
        spec: as for `resolve_source`.
        cache_dir: the Hugging Face hub cache to fill; None means the hub client's default.
        token: a Hugging Face token for private or gated repositories.

    Returns:
        The source as `resolve_source(spec, offline=True)` sees it once the files are cached.

    Raises:
        ModelSourceError: the model cannot be fetched or is not a safetensors model.
    """
    if not spec.startswith(HUB_SCHEME):
        return resolve_source(spec)
    repo_id, revision = _parse_hub_spec(spec)
    logger.info("pulling %s", spec)
    _snapshot(spec, repo_id, revision, cache_dir, offline=False, token=token)
    return resolve_source(spec, cache_dir=cache_dir, offline=True, token=token)


def _parse_hub_spec(spec: str) -> tuple[str, str | None]:
    repo_id, at, revision = spec.removeprefix(HUB_SCHEME).partition("@")
    parts = repo_id.split("/")
    if len(parts) > 2 or not all(parts) or (at and not revision):
        raise ModelSourceError(spec, f"expected {HUB_SCHEME}org/name[@revision]")
    return repo_id, revision or None


def _snapshot(
    spec: str,
    repo_id: str,
    revision: str | None,
    cache_dir: Path | None,
    *,
    offline: bool,
    token: str | None,
) -> Path:
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            token=token,
            allow_patterns=list(_HUB_ALLOW_PATTERNS),
            ignore_patterns=list(_HUB_IGNORE_PATTERNS),
        )
    except (HfHubHTTPError, EntryNotFoundError, HFValidationError, OSError, ValueError) as err:
        if offline and isinstance(err, LocalEntryNotFoundError):
            reason = "not in the Hugging Face cache and offline mode is on: pull it first"
        else:
            text = next(text for kind, text in _HUB_FAILURES if isinstance(err, kind))
            reason = text.format(error=str(err).partition("\n")[0])
        raise ModelSourceError(spec, f"{reason} ({type(err).__name__})") from err
    return Path(folder)


def _resolve_local(spec: str) -> ModelSource:
    if not spec:
        raise ModelSourceError(spec, "empty model source")
    # abspath, not resolve(): hub snapshots are symlinks to blobs whose names mean nothing.
    path = Path(os.path.abspath(spec))
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelSourceError(
                spec, "a file source must be a .safetensors file (pickle checkpoints are refused)"
            )
        weight_files: tuple[Path, ...] = (path,)
        directory, name = path.parent, path.stem
    elif path.is_dir():
        weight_files = _weight_files(spec, path)
        directory, name = path, path.name or "model"
    else:
        raise ModelSourceError(spec, "no such file or directory")
    logger.info("resolved %s to %d weight files", spec, len(weight_files))
    return ModelSource(
        spec=spec, directory=directory, weight_files=weight_files, name=name, revision=None
    )


def _weight_files(spec: str, directory: Path) -> tuple[Path, ...]:
    """Select the safetensors files of a model directory, in shard order."""
    if (directory / _SINGLE_FILE).is_file():
        return (directory / _SINGLE_FILE,)
    if (directory / _INDEX_FILE).is_file():
        return _shards(spec, directory)
    for pickled in _PICKLE_FILES:
        if (directory / pickled).exists():
            raise ModelSourceError(
                spec,
                f"has {pickled} but no {_SINGLE_FILE} or {_INDEX_FILE}:"
                " pickle checkpoints are refused, convert it to safetensors",
            )
    raise ModelSourceError(spec, f"not a model directory: no {_SINGLE_FILE} or {_INDEX_FILE}")


def _shards(spec: str, directory: Path) -> tuple[Path, ...]:
    """The shard files named by the index's weight_map, sorted, each checked to exist."""
    try:
        index = json.loads((directory / _INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelSourceError(spec, f"cannot read {_INDEX_FILE}: {err}") from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelSourceError(spec, f"{_INDEX_FILE} has no weight_map object")
    for name in weight_map.values():
        # A shard must be a plain file name next to the index, never a path out of the snapshot.
        if not (
            isinstance(name, str) and Path(name).name == name and name.endswith(".safetensors")
        ):
            raise ModelSourceError(spec, f"{_INDEX_FILE} names an invalid shard {name!r}")
    names: set[str] = set(weight_map.values())
    missing = sorted(name for name in names if not (directory / name).is_file())
    if missing:
        raise ModelSourceError(spec, f"shards named in {_INDEX_FILE} are missing: {missing}")
    return tuple(directory / name for name in sorted(names))
