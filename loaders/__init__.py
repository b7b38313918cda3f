"""Model sources and safetensors weight streaming.

`resolve_source` (or `pull`) turns a spec into safetensors files; `load_weights` validates their
headers strictly and streams their tensors to a device, optionally checking each file against a
pinned SHA-256 digest (`recorded_digests` reads the ones a hub cache records). Every error
raised derives from `LoaderError`. This package reads no environment variables: all settings are
arguments.
"""

from __future__ import annotations

from loaders.digests import SHA256SUMS, listed_digests, recorded_digests
from loaders.errors import (
    CorruptWeightsError,
    DigestMismatchError,
    DuplicateTensorError,
    HeaderError,
    LoaderError,
    ModelSourceError,
    OffsetError,
    TruncatedFileError,
    WeightsReadError,
)
from loaders.header import DTYPES, MAX_HEADER_BYTES, SafetensorsHeader, TensorInfo, read_header
from loaders.release import release_unreferenced
from loaders.sources import HUB_SCHEME, ModelSource, pull, resolve_source
from loaders.storage import filesystem_type, is_network_filesystem
from loaders.stream import LoadStats, ReadChunk, load_weights, plan_chunks
from loaders.versions import (
    DESIRED_FILE,
    DesiredState,
    Share,
    VersionsFileError,
    fingerprint,
    is_model_root,
    read_desired,
    scan_versions,
    version_order,
)

__all__ = [
    "DESIRED_FILE",
    "DTYPES",
    "HUB_SCHEME",
    "MAX_HEADER_BYTES",
    "SHA256SUMS",
    "CorruptWeightsError",
    "DesiredState",
    "DigestMismatchError",
    "DuplicateTensorError",
    "HeaderError",
    "LoadStats",
    "LoaderError",
    "ModelSource",
    "ModelSourceError",
    "OffsetError",
    "ReadChunk",
    "SafetensorsHeader",
    "Share",
    "TensorInfo",
    "TruncatedFileError",
    "VersionsFileError",
    "WeightsReadError",
    "filesystem_type",
    "fingerprint",
    "is_model_root",
    "is_network_filesystem",
    "listed_digests",
    "load_weights",
    "plan_chunks",
    "pull",
    "read_desired",
    "read_header",
    "recorded_digests",
    "release_unreferenced",
    "resolve_source",
    "scan_versions",
    "version_order",
]
