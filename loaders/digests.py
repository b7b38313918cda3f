"""SHA-256 pins of weight files: matching them to files, the ones a hub cache records, hashing.

A pin covers a file's full bytes, header included, so that it matches ``sha256sum`` of the file and
the digest the Hugging Face hub shows for it. The hub client names each cached LFS blob by that
digest and links the snapshot's files to the blobs, which is what `recorded_digests` reads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from loaders.sources import ModelSource

__all__ = ["SHA256SUMS", "listed_digests", "pinned_files", "recorded_digests", "sha256_of_loaded"]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_BLOBS_DIR = "blobs"
SHA256SUMS = "SHA256SUMS"  # `sha256sum * > SHA256SUMS` in a version directory


def recorded_digests(source: ModelSource) -> dict[str, str]:
    """The SHA-256 digests a Hugging Face cache records for a source's weight files.

    A snapshot file of the hub cache is a symlink to ``blobs/<sha256 of its content>``; files that
    are not such links (a plain local directory, a copy made without symlinks) have no recorded
    digest and are left out.

    Args:
        source: a resolved model source.

    Returns:
        ``{file name: lowercase hex digest}`` for the weight files linked to a digest-named blob.
    """
    recorded: dict[str, str] = {}
    for path in source.weight_files:
        if not path.is_symlink():
            continue
        blob = path.resolve()
        if blob.parent.name == _BLOBS_DIR and _SHA256_HEX.fullmatch(blob.name):
            recorded[path.name] = blob.name
    return recorded


def listed_digests(directory: Path, weight_files: Sequence[Path]) -> dict[str, str] | None:
    """The weight files' digests a directory's SHA256SUMS lists (`sha256sum`'s output), or
    None when it has none.

    Raises:
        ValueError: a line that is not `<digest>  <name>`, or a weight file it does not list.
    """
    try:
        text = (directory / SHA256SUMS).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().removeprefix("*")
        if not name:
            raise ValueError(f"{SHA256SUMS} line {number} is not '<sha256>  <file name>'")
        listed[name] = _digest(digest)
    missing = [path.name for path in weight_files if path.name not in listed]
    if missing:
        raise ValueError(f"{SHA256SUMS} lists no digest for {', '.join(missing)}")
    return {path.name: listed[path.name] for path in weight_files}


def pinned_files(expected_sha256: Mapping[str, str], paths: Sequence[Path]) -> dict[int, str]:
    """Match pins to files by name: ``{index in paths: lowercase digest}``.

    Raises:
        ValueError: a digest is malformed, or a name matches no file or more than one.
    """
    pins: dict[int, str] = {}
    for name, digest in expected_sha256.items():
        matches = [index for index, path in enumerate(paths) if path.name == name]
        if len(matches) != 1:
            found = "no file" if not matches else f"{len(matches)} files"
            raise ValueError(f"expected_sha256 names {name!r}, which matches {found} to load")
        pins[matches[0]] = _digest(digest)
    return pins


def sha256_of_loaded(head: bytes, region: torch.Tensor, piece_bytes: int) -> str:
    """The SHA-256 of a file from what was read of it: its header bytes and its data region.

    A CPU region is hashed in place. A device region is copied back through one pinned buffer of
    `piece_bytes`, which costs device-to-host bandwidth but no second read of the storage.
    """
    digest = hashlib.sha256(head)
    if region.device.type == "cpu":
        # hashlib releases the GIL on large buffers: files hash in parallel threads.
        digest.update(region.numpy().data)
        return digest.hexdigest()
    size = region.numel()
    staging = torch.empty(min(piece_bytes, size), dtype=torch.uint8, pin_memory=True)
    view = staging.numpy().data
    for begin in range(0, size, piece_bytes):
        length = min(piece_bytes, size - begin)
        staging[:length].copy_(region[begin : begin + length])
        digest.update(view[:length])
    return digest.hexdigest()


def _digest(text: str) -> str:
    digest = text.strip().lower()
    if not _SHA256_HEX.fullmatch(digest):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"{shown!r} is not a sha256 digest (64 hex characters)")
    return digest
