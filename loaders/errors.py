"""Errors raised by the loaders package.

Every error this package raises derives from `LoaderError`::

    LoaderError
     ├── ModelSourceError          a source spec that cannot be resolved to safetensors files
     ├── WeightsReadError          the operating system failed to open or read a weights file
     └── CorruptWeightsError       a weights file that is not valid safetensors (.path, .tensor)
          ├── HeaderError          length prefix out of bounds, bad UTF-8 or JSON, duplicate keys,
          │                        bad __metadata__, unknown or packed dtype, bad shape or fields
          ├── OffsetError          data_offsets that do not tile the data region exactly: overlap,
          │                        gap, negative or reversed, size != prod(shape) * itemsize,
          │                        trailing bytes
          ├── TruncatedFileError   the file ends before what its length prefix or offsets promise
          ├── DuplicateTensorError one tensor name in two shards of a checkpoint
          └── DigestMismatchError  a file whose sha256 is not the pinned one (.expected, .actual)

Messages name the file by its basename (the full path is on `.path`) so that they can be shown to
an operator without exposing the layout of the host.
"""

from __future__ import annotations

from pathlib import Path


class LoaderError(Exception):
    """Base of every error raised by the loaders package."""


class ModelSourceError(LoaderError):
    """A model source spec that cannot be resolved to safetensors weights."""

    def __init__(self, spec: str, detail: str) -> None:
        super().__init__(f"model source {spec!r}: {detail}")
        self.spec = spec
        self.detail = detail


class WeightsReadError(LoaderError):
    """The operating system failed to open or read a weights file."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path.name}: {detail}")
        self.path = path
        self.detail = detail


class CorruptWeightsError(LoaderError):
    """A weights file that is not valid safetensors."""

    def __init__(self, path: Path, detail: str, *, tensor: str | None = None) -> None:
        where = path.name if tensor is None else f"{path.name}: tensor {tensor!r}"
        super().__init__(f"{where}: {detail}")
        self.path = path
        self.tensor = tensor
        self.detail = detail


class HeaderError(CorruptWeightsError):
    """The length prefix or the JSON header of a safetensors file is malformed."""


class OffsetError(CorruptWeightsError):
    """The data offsets of a safetensors header do not tile its data region exactly."""


class TruncatedFileError(CorruptWeightsError):
    """A safetensors file that ends before what its header promises."""


class DuplicateTensorError(CorruptWeightsError):
    """A tensor name that appears in more than one shard of a checkpoint."""


class DigestMismatchError(CorruptWeightsError):
    """A weights file whose SHA-256 digest is not the one it was pinned to."""

    def __init__(self, path: Path, *, expected: str, actual: str) -> None:
        super().__init__(path, f"sha256 is {actual}, expected {expected}")
        self.expected = expected
        self.actual = actual
