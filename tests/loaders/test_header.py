"""Tests of strict safetensors header validation, most of them on crafted corrupt files."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loaders import (
    MAX_HEADER_BYTES,
    CorruptWeightsError,
    HeaderError,
    LoaderError,
    OffsetError,
    TruncatedFileError,
    WeightsReadError,
    load_weights,
    read_header,
)

_F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
_I8 = {"dtype": "I8", "shape": [3], "data_offsets": [8, 11]}
_DATA = bytes(range(11))


def _prefixed(header: bytes, data: bytes = _DATA, *, length: int | None = None) -> bytes:
    size = len(header) if length is None else length
    return size.to_bytes(8, "little") + header + data


def _entries(data: bytes = _DATA, **entries: object) -> bytes:
    return _prefixed(json.dumps(entries).encode(), data)


_VALID = _entries(a=_F32, b=_I8)
_VALID_HEADER_END = 8 + int.from_bytes(_VALID[:8], "little")


def _pickle_checkpoint() -> bytes:
    return pickle.dumps({"a": [1.0, 2.0]}, protocol=pickle.HIGHEST_PROTOCOL)


def _zip_checkpoint() -> bytes:
    # The layout torch.save has written since 1.6: a zip holding archive/data.pkl.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"a": 1}, protocol=2))
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


# id -> (file bytes, expected error class, tensor named by the error or None)
_CORRUPT: dict[str, tuple[Callable[[], bytes], type[CorruptWeightsError], str | None]] = {
    "empty-file": (lambda: b"", TruncatedFileError, None),
    "truncated-in-length-prefix": (lambda: _VALID[:5], TruncatedFileError, None),
    "truncated-in-header": (lambda: _VALID[: _VALID_HEADER_END - 10], TruncatedFileError, None),
    "truncated-in-data": (lambda: _VALID[:-2], TruncatedFileError, "b"),
    "truncated-in-first-tensor": (lambda: _VALID[: _VALID_HEADER_END + 3], TruncatedFileError, "a"),
    "length-2-to-63": (lambda: _prefixed(b"{}", b"", length=2**63), HeaderError, None),
    "length-max-u64": (lambda: _prefixed(b"{}", b"", length=2**64 - 1), HeaderError, None),
    "length-past-file-end": (
        lambda: _prefixed(b'{"a":1}', b"", length=1000),
        TruncatedFileError,
        None,
    ),
    "length-over-100-MB": (
        lambda: _prefixed(b"{}", b"", length=MAX_HEADER_BYTES + 1),
        HeaderError,
        None,
    ),
    "length-zero": (lambda: _prefixed(b"", b"{}"), HeaderError, None),
    "length-one": (lambda: _prefixed(b"{", b"}"), HeaderError, None),
    "bad-utf8": (lambda: _prefixed(b'{"\xff\xfe": 1}', b""), HeaderError, None),
    "not-json": (lambda: _prefixed(b'{"a": {"dtype": ', b""), HeaderError, None),
    "json-nan": (
        lambda: _prefixed(b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 0]}}', b""),
        HeaderError,
        None,
    ),
    "json-array": (lambda: _prefixed(b"[1, 2]", b""), HeaderError, None),
    "json-string": (lambda: _prefixed(b'"{}"', b""), HeaderError, None),
    "duplicate-tensor-name": (
        lambda: _prefixed(
            b'{"a": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]},'
            b' "a": {"dtype": "I8", "shape": [1], "data_offsets": [1, 2]}}',
            b"xy",
        ),
        HeaderError,
        "a",
    ),
    "duplicate-field": (
        lambda: _prefixed(
            b'{"a": {"dtype": "I8", "dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"x"
        ),
        HeaderError,
        "a",
    ),
    "entry-not-object": (lambda: _entries(b"", a=5), HeaderError, "a"),
    "missing-field": (
        lambda: _entries(b"", a={"dtype": "F32", "data_offsets": [0, 0]}),
        HeaderError,
        "a",
    ),
    "extra-field": (lambda: _entries(a={**_F32, "strides": [1]}, b=_I8), HeaderError, "a"),
    "unknown-dtype": (lambda: _entries(a={**_F32, "dtype": "F128"}, b=_I8), HeaderError, "a"),
    "dtype-not-string": (lambda: _entries(a={**_F32, "dtype": 4}, b=_I8), HeaderError, "a"),
    "packed-dtype": (lambda: _entries(b"", a={**_F32, "dtype": "F4"}), HeaderError, "a"),
    "negative-shape": (lambda: _entries(a=_F32, b={**_I8, "shape": [-3]}), HeaderError, "b"),
    "float-shape": (lambda: _entries(a={**_F32, "shape": [2.0]}, b=_I8), HeaderError, "a"),
    "bool-shape": (lambda: _entries(a=_F32, b={**_I8, "shape": [True]}), HeaderError, "b"),
    "shape-not-list": (lambda: _entries(a={**_F32, "shape": 2}, b=_I8), HeaderError, "a"),
    "offsets-wrong-arity": (
        lambda: _entries(a={**_F32, "data_offsets": [0]}, b=_I8),
        HeaderError,
        "a",
    ),
    "offsets-not-int": (
        lambda: _entries(a={**_F32, "data_offsets": ["0", "8"]}, b=_I8),
        HeaderError,
        "a",
    ),
    "overlapping-offsets": (
        lambda: _entries(a=_F32, b={**_I8, "data_offsets": [6, 9]}),
        OffsetError,
        "b",
    ),
    "gapped-offsets": (
        lambda: _entries(_DATA + b"\0", a=_F32, b={**_I8, "data_offsets": [9, 12]}),
        OffsetError,
        "b",
    ),
    "gap-before-first": (
        lambda: _entries(
            b"\0" + _DATA, a={**_F32, "data_offsets": [1, 9]}, b={**_I8, "data_offsets": [9, 12]}
        ),
        OffsetError,
        "a",
    ),
    "negative-offset": (
        lambda: _entries(a={**_F32, "data_offsets": [-8, 0]}, b=_I8),
        OffsetError,
        "a",
    ),
    "reversed-offsets": (
        lambda: _entries(a={**_F32, "data_offsets": [8, 0]}, b=_I8),
        OffsetError,
        "a",
    ),
    "offsets-past-data": (
        lambda: _entries(a=_F32, b={**_I8, "data_offsets": [2**40, 2**40 + 3]}),
        OffsetError,
        "b",
    ),
    "size-not-shape": (lambda: _entries(a={**_F32, "shape": [3]}, b=_I8), OffsetError, "a"),
    "size-not-itemsize": (lambda: _entries(a={**_F32, "dtype": "F16"}, b=_I8), OffsetError, "a"),
    "trailing-bytes": (lambda: _VALID + b"\0\0\0\0", OffsetError, None),
    "metadata-value-not-string": (
        lambda: _entries(__metadata__={"format": 1}, a=_F32, b=_I8),
        HeaderError,
        None,
    ),
    "metadata-not-object": (
        lambda: _entries(__metadata__=["format"], a=_F32, b=_I8),
        HeaderError,
        None,
    ),
    "pickle-renamed": (_pickle_checkpoint, HeaderError, None),
    "zip-torch-checkpoint-renamed": (_zip_checkpoint, HeaderError, None),
}


@pytest.mark.parametrize("case", sorted(_CORRUPT))
def test_corrupt_file_raises_typed_error_naming_file_and_tensor(tmp_path: Path, case: str) -> None:
    build, expected, tensor = _CORRUPT[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(build())
    with pytest.raises(CorruptWeightsError) as caught:
        read_header(path)
    error = caught.value
    assert type(error) is expected, str(error)
    assert error.path == path
    assert error.tensor == tensor
    assert path.name in str(error)
    if tensor is not None:
        assert repr(tensor) in str(error)


@pytest.mark.parametrize("case", ["pickle-renamed", "truncated-in-data", "overlapping-offsets"])
def test_load_weights_raises_the_same_errors(tmp_path: Path, case: str) -> None:
    build, expected, _ = _CORRUPT[case]
    path = tmp_path / "model.safetensors"
    path.write_bytes(build())
    with pytest.raises(expected, match=r"model\.safetensors"):
        load_weights([path])


def test_errors_share_one_base() -> None:
    for error in (HeaderError, OffsetError, TruncatedFileError, WeightsReadError):
        assert issubclass(error, LoaderError)


def test_valid_header_lists_tensors_in_offset_order_with_absolute_offsets(tmp_path: Path) -> None:
    path = tmp_path / "valid.safetensors"
    path.write_bytes(_entries(__metadata__={"format": "pt"}, b=_I8, a=_F32))
    header = read_header(path)
    assert header.data_start == _VALID_HEADER_END + len('"__metadata__": {"format": "pt"}, ')
    assert header.file_size == header.data_start + len(_DATA)
    assert [(t.name, t.dtype, t.shape) for t in header.tensors] == [
        ("a", "F32", (2,)),
        ("b", "I8", (3,)),
    ]
    assert header.tensors[0].start == header.data_start
    assert header.tensors[1].end == header.file_size
    assert dict(header.metadata) == {"format": "pt"}


def test_header_as_written_by_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "saved.safetensors"
    save_file({"w": torch.zeros(3, 2), "empty": torch.zeros(0), "scalar": torch.tensor(1.5)}, path)
    header = read_header(path)
    # safetensors pads its header with spaces to an 8-byte boundary.
    assert header.data_start % 8 == 0
    assert sorted(t.name for t in header.tensors) == ["empty", "scalar", "w"]


def test_file_with_no_tensors_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "none.safetensors"
    path.write_bytes(_prefixed(b"{}", b""))
    header = read_header(path)
    assert header.tensors == ()
    assert header.data_start == header.file_size == 10


def test_empty_tensors_may_share_an_offset(tmp_path: Path) -> None:
    empty = {"dtype": "F32", "shape": [0, 4], "data_offsets": [8, 8]}
    path = tmp_path / "empty.safetensors"
    path.write_bytes(_entries(_DATA, a=_F32, e1=empty, e2=empty, b=_I8))
    assert [t.name for t in read_header(path).tensors] == ["a", "e1", "e2", "b"]


def test_missing_file_is_a_read_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsReadError, match=r"absent\.safetensors"):
        read_header(tmp_path / "absent.safetensors")


def test_short_reads_of_the_header_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pread = os.pread
    path = tmp_path / "valid.safetensors"
    path.write_bytes(_VALID)
    monkeypatch.setattr(os, "pread", lambda fd, size, offset: real_pread(fd, min(size, 3), offset))
    assert [t.name for t in read_header(path).tensors] == ["a", "b"]
