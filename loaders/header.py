"""Strict parsing of safetensors headers.

A safetensors file is an 8-byte little-endian length N, N bytes of UTF-8 JSON, then a data region.
The JSON maps tensor names to ``{"dtype", "shape", "data_offsets"}`` (offsets relative to the data
region) plus an optional ``__metadata__`` string map. Nothing here trusts the file: every field is
checked and the offsets must tile the data region exactly, so that the reader never reads outside
a tensor's bytes and a wrong file (a renamed pickle, a partial download) fails before any data is
read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import torch

from loaders.errors import HeaderError, OffsetError, TruncatedFileError, WeightsReadError

__all__ = [
    "DTYPES",
    "MAX_HEADER_BYTES",
    "SafetensorsHeader",
    "TensorInfo",
    "read_header",
    "read_header_and_bytes_fd",
    "read_header_fd",
]

# The bound the reference implementation enforces; it keeps a hostile length from allocating.
MAX_HEADER_BYTES = 100_000_000
_PREFIX_BYTES = 8
_METADATA_KEY = "__metadata__"
_TENSOR_FIELDS = frozenset({"dtype", "shape", "data_offsets"})

_DTYPE_CANDIDATES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "C64": "complex64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2": "float8_e5m2",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}

DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {
        code: getattr(torch, name)
        for code, name in _DTYPE_CANDIDATES.items()
        # Older torch builds lack the unsigned and float8 types; those codes are then unknown.
        if isinstance(getattr(torch, name, None), torch.dtype)
    }
)
"""Safetensors dtype code to the torch dtype it loads as, for the codes this torch supports."""

# Sub-byte codes whose shape counts elements, not bytes; torch has no matching unpacked dtype.
_PACKED_DTYPES = frozenset({"F4", "F6_E2M3", "F6_E3M2"})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file, with absolute byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The validated header of one safetensors file."""

    path: Path
    tensors: tuple[TensorInfo, ...]
    metadata: Mapping[str, str]
    data_start: int
    file_size: int

    @property
    def data_bytes(self) -> int:
        """Size of the data region that follows the header."""
        return self.file_size - self.data_start


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers the first key it saw twice."""

    duplicate: str | None = None


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    for key, value in pairs:
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


def _reject_constant(token: str) -> NoReturn:
    raise ValueError(f"non-standard JSON constant {token}")


def _read_exact(fd: int, path: Path, offset: int, size: int) -> bytes:
    """Read exactly `size` bytes at `offset`, looping over short reads."""
    parts: list[bytes] = []
    done = 0
    while done < size:
        try:
            part = os.pread(fd, size - done, offset + done)
        except OSError as err:
            raise WeightsReadError(path, f"read failed: {err.strerror}") from err
        if not part:
            raise TruncatedFileError(
                path, f"file ends at byte {offset + done}, expected {size} bytes at {offset}"
            )
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def read_header(path: Path) -> SafetensorsHeader:
    """Read and strictly validate the header of a safetensors file.

    Args:
        path: the safetensors file.

    Returns:
        The header, with tensors in file-offset order.

    Raises:
        HeaderError, OffsetError, TruncatedFileError: the file is not valid safetensors.
        WeightsReadError: the file cannot be opened or read.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise WeightsReadError(path, f"cannot open: {err.strerror}") from err
    try:
        return read_header_fd(fd, path)
    finally:
        os.close(fd)


def read_header_fd(fd: int, path: Path) -> SafetensorsHeader:
    """Read and strictly validate the header of the open safetensors file `fd` (named `path`)."""
    return read_header_and_bytes_fd(fd, path)[0]


def read_header_and_bytes_fd(fd: int, path: Path) -> tuple[SafetensorsHeader, bytes]:
    """As `read_header_fd`, also returning the bytes read: the file's first `data_start` bytes."""
    try:
        file_size = os.fstat(fd).st_size
    except OSError as err:
        raise WeightsReadError(path, f"cannot stat: {err.strerror}") from err
    if file_size < _PREFIX_BYTES:
        raise TruncatedFileError(
            path, f"file is {file_size} bytes, shorter than the 8-byte header length"
        )
    prefix = _read_exact(fd, path, 0, _PREFIX_BYTES)
    header_len = int.from_bytes(prefix, "little")
    if header_len < 2 or header_len > MAX_HEADER_BYTES:
        raise HeaderError(
            path,
            f"header length {header_len} is outside [2, {MAX_HEADER_BYTES}]"
            " (not a safetensors file?)",
        )
    data_start = _PREFIX_BYTES + header_len
    if data_start > file_size:
        raise TruncatedFileError(
            path, f"header length {header_len} runs past the end of the {file_size}-byte file"
        )
    raw = _read_exact(fd, path, _PREFIX_BYTES, header_len)
    document = _parse_json(path, raw)
    metadata = _metadata(path, document)
    tensors = [
        _tensor_info(path, name, entry, data_start)
        for name, entry in document.items()
        if name != _METADATA_KEY
    ]
    tensors.sort(key=lambda t: (t.start, t.end, t.name))
    _check_tiling(path, tensors, data_start, file_size)
    header = SafetensorsHeader(
        path=path,
        tensors=tuple(tensors),
        metadata=MappingProxyType(metadata),
        data_start=data_start,
        file_size=file_size,
    )
    return header, prefix + raw


def _parse_json(path: Path, raw: bytes) -> _JsonObject:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HeaderError(path, f"header is not valid UTF-8 (byte {err.start})") from err
    try:
        document = json.loads(text, object_pairs_hook=_json_object, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        raise HeaderError(path, f"header is not valid JSON: {err}") from err
    if not isinstance(document, _JsonObject):
        raise HeaderError(path, f"header is a JSON {type(document).__name__}, not an object")
    if document.duplicate is not None:
        raise HeaderError(path, "name appears twice in the header", tensor=document.duplicate)
    return document


def _metadata(path: Path, document: _JsonObject) -> dict[str, str]:
    metadata = document.get(_METADATA_KEY, {})
    if not isinstance(metadata, dict):
        raise HeaderError(path, f"{_METADATA_KEY} must be an object of strings")
    if isinstance(metadata, _JsonObject) and metadata.duplicate is not None:
        raise HeaderError(path, f"{_METADATA_KEY} key {metadata.duplicate!r} appears twice")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise HeaderError(
                path,
                f"{_METADATA_KEY}[{key!r}] must be a string, not {type(value).__name__}",
            )
    return dict(metadata)


def _is_int(value: object) -> bool:
    # bool is an int subclass in Python but never a valid shape or offset in JSON terms.
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_info(path: Path, name: str, entry: object, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise HeaderError(path, "entry must be a JSON object", tensor=name)
    if isinstance(entry, _JsonObject) and entry.duplicate is not None:
        raise HeaderError(path, f"field {entry.duplicate!r} appears twice", tensor=name)
    if entry.keys() != _TENSOR_FIELDS:
        raise HeaderError(
            path,
            f"fields are {sorted(entry)}, expected exactly {sorted(_TENSOR_FIELDS)}",
            tensor=name,
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise HeaderError(path, "dtype must be a string", tensor=name)
    if dtype in _PACKED_DTYPES:
        raise HeaderError(path, f"packed sub-byte dtype {dtype} is not supported", tensor=name)
    if dtype not in DTYPES:
        raise HeaderError(path, f"unknown dtype {dtype!r}", tensor=name)
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise HeaderError(path, f"shape {shape!r} is not a list of non-negative ints", tensor=name)
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets)):
        raise HeaderError(path, f"data_offsets {offsets!r} are not [start, end] ints", tensor=name)
    start, end = offsets
    if start < 0 or end < start:
        raise OffsetError(path, f"data_offsets [{start}, {end}] are out of range", tensor=name)
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if end - start != expected:
        raise OffsetError(
            path,
            f"data_offsets span {end - start} bytes but shape {shape} of {dtype} needs {expected}",
            tensor=name,
        )
    return TensorInfo(
        name=name, dtype=dtype, shape=tuple(shape), start=data_start + start, end=data_start + end
    )


def _check_tiling(path: Path, tensors: list[TensorInfo], data_start: int, file_size: int) -> None:
    """Check that the sorted tensors cover [data_start, file_size) once, with nothing left over."""
    cursor = data_start
    previous: str | None = None
    for info in tensors:
        if info.start < cursor:
            raise OffsetError(
                path,
                f"data overlaps tensor {previous!r} by {cursor - info.start} bytes",
                tensor=info.name,
            )
        if info.start > cursor and info.end > file_size:
            raise OffsetError(
                path,
                f"data_offsets lie past the {file_size - data_start}-byte data region",
                tensor=info.name,
            )
        if info.start > cursor:
            raise OffsetError(
                path,
                f"data bytes [{cursor - data_start}, {info.start - data_start}) before it"
                " belong to no tensor",
                tensor=info.name,
            )
        if info.end > file_size:
            raise TruncatedFileError(
                path,
                f"file ends {info.end - file_size} bytes before the end of this tensor",
                tensor=info.name,
            )
        cursor = info.end
        previous = info.name
    if cursor < file_size:
        raise OffsetError(path, f"{file_size - cursor} trailing bytes after the last tensor")
