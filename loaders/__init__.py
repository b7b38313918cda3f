"""Model sources and safetensors weight streaming.

`resolve_source` (or `pull`) turns a spec into safetensors files; `load_weights` validates their
headers strictly and streams their tensors to a device. Every error raised derives from
`LoaderError`. This package reads no environment variables: all settings are arguments.
"""

from __future__ import annotations

from loaders.errors import (
    CorruptWeightsError,
    DuplicateTensorError,
    HeaderError,
    LoaderError,
    ModelSourceError,
    OffsetError,
    TruncatedFileError,
    WeightsReadError,
)
from loaders.header import DTYPES, MAX_HEADER_BYTES, SafetensorsHeader, TensorInfo, read_header
from loaders.sources import HUB_SCHEME, ModelSource, pull, resolve_source
from loaders.stream import LoadStats, ReadChunk, load_weights, plan_chunks

__all__ = [
    "DTYPES",
    "HUB_SCHEME",
    "MAX_HEADER_BYTES",
    "CorruptWeightsError",
    "DuplicateTensorError",
    "HeaderError",
    "LoadStats",
    "LoaderError",
    "ModelSource",
    "ModelSourceError",
    "OffsetError",
    "ReadChunk",
    "SafetensorsHeader",
    "TensorInfo",
    "TruncatedFileError",
    "WeightsReadError",
    "load_weights",
    "plan_chunks",
    "pull",
    "read_header",
    "resolve_source",
]
