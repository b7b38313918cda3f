"""Open Inference Protocol v2 tensors on the wire: JSON `data` and the binary-data extension.

A request body is a JSON header, optionally followed by binary tensor data: the header's length
is then the `Inference-Header-Content-Length` request header, and each binary input says its
bytes in `parameters.binary_data_size`, the inputs' bytes following one another in input order.
Numbers are little-endian; a BYTES element is a 4-byte little-endian length and its bytes. FP16
and BF16 travel only as binary (JSON has no such numbers).

Every size is checked before anything is allocated for it: a shape's element count is computed
from at most `MAX_RANK` dimensions of at most 2**63 - 1 each, and must fit what the body holds
(a JSON element takes at least a byte, a binary one its item size, a BYTES one its 4-byte
length); `binary_data_size` must agree with the shape and lie within the body.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt

from sidecar.errors import InvalidInputError

Array = npt.NDArray[Any]

# OIP datatype -> numpy dtype (multi-byte numbers little-endian, as the wire carries them).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(object),
}
# numpy's name of an element type -> its OIP datatype (`TensorSpec.dtype` names).
_BY_NUMPY_NAME = {dtype.name: datatype for datatype, dtype in DATATYPES.items()}
BINARY_ONLY = frozenset({"FP16", "BF16"})
_INTEGERS = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})
MAX_RANK = 32
MAX_NAME_CHARS = 256  # a tensor's name; real ones are a few words
_MAX_DIM = (1 << 63) - 1  # INT64, as the protocol's shapes are
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix


def datatype_of(numpy_name: str) -> str:
    """The OIP datatype of a numpy element type name (`float32` -> `FP32`)."""
    try:
        return _BY_NUMPY_NAME[numpy_name]
    except KeyError:
        raise ValueError(f"no Open Inference Protocol datatype for {numpy_name}") from None


@dataclass(frozen=True)
class Tensor:
    """One input as the header declares it: the data is decoded later (`decode`)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int  # elements: the product of `shape`
    data: Any  # JSON `data`, or None when binary
    binary_size: int | None  # `parameters.binary_data_size`


def split_body(body: bytes | bytearray, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it (`Inference-Header-Content-Length`)."""
    view = memoryview(body)
    if header_length is None:
        return bytes(view), view[len(view) :]
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 < length <= len(view):
        raise InvalidInputError(
            f"Inference-Header-Content-Length must be an integer between 1 and the body's "
            f"{len(view)} bytes"
        )
    return bytes(view[:length]), view[length:]


def parse_tensor(value: Any, index: int, *, max_bytes: int) -> Tensor:
    """Check one entry of `inputs`: its name, datatype, shape and where its data is.

    Args:
        value: the entry.
        index: its position, for messages.
        max_bytes: the body's size: what its elements must fit in (checked before decoding).
    """
    if not isinstance(value, dict):
        raise InvalidInputError(f"inputs[{index}] must be an object")
    name = value.get("name")
    if not isinstance(name, str):
        raise InvalidInputError(f"inputs[{index}].name must be a string")
    if len(name) > MAX_NAME_CHARS:  # every later message quotes it: bounded here
        raise InvalidInputError(f"inputs[{index}].name is longer than {MAX_NAME_CHARS} characters")
    datatype = value.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:  # a dict is not hashable
        raise InvalidInputError(
            f"input {name[:64]!r}: datatype must be one of {', '.join(DATATYPES)}"
        )
    shape = _shape(value.get("shape"), name)
    count = math.prod(shape)  # at most MAX_RANK factors of 63 bits: cheap, exact
    parameters = value.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInputError(f"input {name!r}: parameters must be an object")
    size = parameters.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InvalidInputError(f"input {name!r}: binary_data_size must be a non-negative integer")
    data = value.get("data")
    if (size is None) == (data is None):
        raise InvalidInputError(
            f"input {name!r} must have either 'data' or parameters.binary_data_size"
        )
    if size is None and datatype in BINARY_ONLY:
        raise InvalidInputError(
            f"input {name!r}: {datatype} data must be sent as binary (binary_data_size)"
        )
    # The body must be able to hold the elements: a JSON element takes a byte at least, a
    # binary one its item size, a BYTES one its 4-byte length.
    least = 1 if size is None else 4 if datatype == "BYTES" else DATATYPES[datatype].itemsize
    if count * least > max_bytes:
        raise InvalidInputError(
            f"input {name!r}: shape {list(shape)} has {count} elements, more than the request "
            "can hold"
        )
    return Tensor(name, datatype, shape, count, data, size)


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_RANK:
        raise InvalidInputError(
            f"input {name!r}: shape must be a list of at most {MAX_RANK} integers"
        )
    for dim in value:
        if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim <= _MAX_DIM:
            raise InvalidInputError(f"input {name!r}: shape must hold integers from 0 to 2**63-1")
    return tuple(value)


def decode(tensors: Sequence[Tensor], binary: memoryview) -> dict[str, Array]:
    """Each tensor's array, in its shape: BYTES as an object array of `bytes`.

    The binary tensors take consecutive slices of `binary`, which they must use up exactly.
    """
    arrays: dict[str, Array] = {}
    offset = 0
    for tensor in tensors:
        if tensor.name in arrays:
            raise InvalidInputError(f"input {tensor.name!r} is given twice")
        if tensor.binary_size is None:
            arrays[tensor.name] = _from_json(tensor)
            continue
        end = offset + tensor.binary_size
        if end > len(binary):
            raise InvalidInputError(
                f"input {tensor.name!r}: binary data truncated: {tensor.binary_size} bytes "
                f"declared, {len(binary) - offset} left in the body"
            )
        arrays[tensor.name] = _from_binary(tensor, binary[offset:end])
        offset = end
    if offset != len(binary):
        raise InvalidInputError(
            f"the body has {len(binary) - offset} bytes of binary data that no input declares"
        )
    return arrays


def _from_binary(tensor: Tensor, chunk: memoryview) -> Array:
    if tensor.datatype == "BYTES":
        return _bytes_elements(tensor, chunk).reshape(tensor.shape)
    dtype = DATATYPES[tensor.datatype]
    expected = tensor.count * dtype.itemsize
    if len(chunk) != expected:
        raise InvalidInputError(
            f"input {tensor.name!r}: binary_data_size is {len(chunk)}; shape "
            f"{list(tensor.shape)} of {tensor.datatype} takes {expected} bytes"
        )
    array = np.frombuffer(chunk, dtype=dtype).reshape(tensor.shape)
    if tensor.datatype == "BOOL" and not np.all(np.frombuffer(chunk, dtype=np.uint8) <= 1):
        raise InvalidInputError(f"input {tensor.name!r}: BOOL bytes must be 0 or 1")
    return array


def _bytes_elements(tensor: Tensor, chunk: memoryview) -> Array:
    out = np.empty(tensor.count, dtype=object)
    position = 0
    for index in range(tensor.count):
        if position + 4 > len(chunk):
            raise InvalidInputError(
                f"input {tensor.name!r}: binary data ends inside element {index} of {tensor.count}"
            )
        (length,) = _LENGTH.unpack_from(chunk, position)
        position += 4
        if position + length > len(chunk):
            raise InvalidInputError(
                f"input {tensor.name!r}: element {index} declares {length} bytes; "
                f"{len(chunk) - position} are left"
            )
        out[index] = bytes(chunk[position : position + length])
        position += length
    if position != len(chunk):
        raise InvalidInputError(
            f"input {tensor.name!r}: binary_data_size is {len(chunk)}; its {tensor.count} "
            f"elements take {position} bytes"
        )
    return out


def _from_json(tensor: Tensor) -> Array:
    flat = _flatten(tensor.data, tensor.name)
    if len(flat) != tensor.count:
        raise InvalidInputError(
            f"input {tensor.name!r} has {len(flat)} elements; shape {list(tensor.shape)} "
            f"takes {tensor.count}"
        )
    kinds = set(map(type, flat))
    datatype = tensor.datatype
    if datatype == "BYTES":
        if not kinds <= {str}:
            raise InvalidInputError(f"input {tensor.name!r}: BYTES data must be strings")
        out = np.empty(tensor.count, dtype=object)
        out[:] = [text.encode("utf-8", "surrogatepass") for text in flat]
        return out.reshape(tensor.shape)
    allowed = {bool} if datatype == "BOOL" else {int} if datatype in _INTEGERS else {int, float}
    if not kinds <= allowed:
        what = (
            "booleans" if datatype == "BOOL" else "integers" if float not in allowed else "numbers"
        )
        raise InvalidInputError(f"input {tensor.name!r}: {datatype} data must be {what}")
    dtype = DATATYPES[datatype]
    try:
        with np.errstate(over="ignore"):  # a float past the type's range: inf, refused below
            array = np.array(flat, dtype=dtype)
    except OverflowError:
        raise InvalidInputError(
            f"input {tensor.name!r}: a value is out of the range of {datatype}"
        ) from None
    if dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InvalidInputError(f"input {tensor.name!r}: a value is out of the range of {datatype}")
    return array.reshape(tensor.shape)


def _flatten(data: Any, name: str) -> list[Any]:
    """The leaves of `data`, a flat or nested JSON list, in row-major order."""
    if not isinstance(data, list):
        raise InvalidInputError(f"input {name!r}: data must be a list")
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def encode(array: Array, *, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """An output's `datatype`, `shape` and `data` (or `parameters.binary_data_size`), and its
    binary data when asked for."""
    datatype = datatype_of(array.dtype.name)
    tensor: dict[str, Any] = {"datatype": datatype, "shape": list(array.shape)}
    if not binary:
        if datatype == "BYTES":
            tensor["data"] = [item.decode("utf-8", "replace") for item in array.ravel()]
        else:
            tensor["data"] = np.ascontiguousarray(array).ravel()
        return tensor, None
    if datatype == "BYTES":
        raw = b"".join(_LENGTH.pack(len(item)) + item for item in array.ravel())
    else:
        raw = np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    return tensor, raw
