"""An ONNX graph from a model directory: checked before anything runs it, then one session.

`check_graph` reads `model.onnx` without its external data (protobuf, never pickle) and
refuses, naming the file: a graph or external data file outside the model directory (a `..`, an
absolute path, or a symlink that leads out), a file too large for protobuf or too short for the
tensors it must hold (truncated), tensors whose bytes do not match their shape, an operator
outside the domains ONNX Runtime implements itself (a custom op would need a library, and
custom-op libraries are never loaded), and whatever the ONNX checker refuses. `Graph` is the
session built from the checked file: ONNX Runtime with no custom-op library, its intra-op threads
sized as torch's are (`torch.get_num_threads()`), no inter-op pool, run only from the device
thread that called it.
"""

from __future__ import annotations

import ctypes
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from onnx import GraphProto, ModelProto, TensorProto

from sidecar.models.errors import ModelLoadError
from sidecar.models.interface import TensorSpec
from sidecar.models.onnx_model import GRAPH_FILE

logger = logging.getLogger(__name__)

# Protobuf cannot parse a message of 2 GiB or more: larger graphs keep their weights outside.
MAX_GRAPH_BYTES = (2 << 30) - 1
# Operator domains whose kernels ship inside ONNX Runtime (com.microsoft: its contrib ops, which
# its transformer optimizer writes). Any other domain names a custom-op library.
BUILTIN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
# ONNX Runtime's type names -> numpy's (the element types a served tensor may have).
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(bfloat16)": "bfloat16",  # ml_dtypes' (numpy has none): bound as raw bytes, see `run`
}
_FLOAT_TYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.FLOAT16: torch.float16,
}


@dataclass(frozen=True)
class CheckedGraph:
    """A graph that passed `check_graph`: where it is and what its weights compute in."""

    path: Path
    dtype: torch.dtype
    metadata: dict[str, str]
    num_bytes: int  # the graph file and its external data


def check_graph(directory: Path) -> CheckedGraph:
    """Validate `model.onnx` of `directory` and its external data before anything loads it.

    Raises:
        ModelLoadError: naming the file and what is wrong with it.
    """
    root = directory.resolve()
    path = _inside(root, GRAPH_FILE, "the graph")
    size = path.stat().st_size
    if not 0 < size <= MAX_GRAPH_BYTES:
        raise ModelLoadError(
            f"{GRAPH_FILE}: {size} bytes, outside 1 to {MAX_GRAPH_BYTES} (protobuf's limit; "
            "larger graphs keep their weights in external data files)"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-like errors, ...
        raise ModelLoadError(
            f"{GRAPH_FILE}: not a readable ONNX graph (truncated or another format): "
            f"{type(exc).__name__}"
        ) from None
    external = _check_tensors(root, model)
    _check_domains(model)
    try:
        # By path: the checker finds external data relative to the graph (reading none of it).
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise ModelLoadError(f"{GRAPH_FILE}: the ONNX checker refuses the graph: {first}") from None
    kinds = [t.data_type for t in _initializers(model.graph) if t.data_type in _FLOAT_TYPES]
    dtype = _FLOAT_TYPES[max(set(kinds), key=kinds.count)] if kinds else torch.float32
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    return CheckedGraph(path, dtype, metadata, size + external)


def _inside(root: Path, name: str, what: str) -> Path:
    """`root/name` as a regular file that resolves inside `root` (symlinks followed)."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ModelLoadError(f"{what}: {name!r} is not a path inside the model directory")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root):
        raise ModelLoadError(f"{what}: {name!r} is a symlink that leads out of the model directory")
    if not resolved.is_file():
        raise ModelLoadError(f"{what}: {name!r} is missing or not a regular file")
    return resolved


def _initializers(graph: GraphProto) -> Iterator[TensorProto]:
    """Every initializer and constant tensor of the graph and its subgraphs."""
    for graph_ in _graphs(graph):
        yield from graph_.initializer
        yield from (sparse.values for sparse in graph_.sparse_initializer)
        for node in graph_.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def _graphs(graph: GraphProto) -> Iterator[GraphProto]:
    """The graph and every subgraph (If, Loop, Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graphs(subgraph)


def _expected_bytes(tensor: TensorProto) -> int | None:
    """Bytes the tensor's shape and type take, None for strings (their length varies)."""
    if tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    itemsize = int(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)
    count = math.prod(int(dim) for dim in tensor.dims)
    if tensor.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return (count + 1) // 2
    return count * itemsize


def _check_tensors(root: Path, model: ModelProto) -> int:
    """Check every tensor's bytes against its shape; returns the external bytes referenced."""
    sizes: dict[Path, int] = {}
    total = 0
    for tensor in _initializers(model.graph):
        expected = _expected_bytes(tensor)
        if tensor.data_location != TensorProto.EXTERNAL:
            if tensor.raw_data and expected is not None and len(tensor.raw_data) != expected:
                raise ModelLoadError(
                    f"{GRAPH_FILE}: tensor {tensor.name!r} holds {len(tensor.raw_data)} bytes, "
                    f"its shape {list(tensor.dims)} needs {expected}"
                )
            continue
        fields = {entry.key: entry.value for entry in tensor.external_data}
        location = fields.get("location", "")
        what = f"{GRAPH_FILE}: the external data of tensor {tensor.name!r}"
        path = _inside(root, location, what)
        if (root / location).is_symlink():  # ONNX's rule: the checker would refuse it too
            raise ModelLoadError(f"{what}: {location!r} is a symlink, not a regular file")
        try:
            offset, length = int(fields.get("offset", 0)), int(fields.get("length", -1))
        except ValueError:
            raise ModelLoadError(
                f"{GRAPH_FILE}: tensor {tensor.name!r} has a malformed offset or length"
            ) from None
        if expected is None or length not in (-1, expected) or offset < 0:
            raise ModelLoadError(
                f"{GRAPH_FILE}: tensor {tensor.name!r} in {location} declares {length} bytes at "
                f"{offset}; its shape {list(tensor.dims)} needs {expected}"
            )
        size = sizes.setdefault(path, path.stat().st_size)
        if offset + expected > size:
            raise ModelLoadError(
                f"{location}: {size} bytes, too short for tensor {tensor.name!r} "
                f"({expected} bytes at {offset}): truncated?"
            )
        total += expected
    return total


def _check_domains(model: ModelProto) -> None:
    """Every operator of the graph, its subgraphs and its own functions runs in ONNX Runtime."""
    local = {function.domain for function in model.functions}
    nodes = [node for graph in _graphs(model.graph) for node in graph.node]
    nodes += [node for function in model.functions for node in function.node]
    for node in nodes:
        if node.domain not in BUILTIN_DOMAINS and node.domain not in local:
            raise ModelLoadError(
                f"{GRAPH_FILE}: operator {node.op_type!r} of domain {node.domain!r} (node "
                f"{node.name!r}) is a custom operator; custom-op libraries are never loaded "
                f"(domains served: {', '.join(sorted(repr(d) for d in BUILTIN_DOMAINS))})"
            )


class Graph:
    """An ONNX Runtime session on a checked graph, and the facts of its device.

    Args:
        checked: the graph `check_graph` passed.
        device: `cpu`, or `cuda:N` (needs ONNX Runtime's CUDA execution provider).
    """

    name = "onnxruntime"

    def __init__(self, checked: CheckedGraph, device: torch.device) -> None:
        self.device = device
        self.dtype = checked.dtype
        self.metadata = checked.metadata
        self.path = checked.path
        options = ort.SessionOptions()
        # Like torch's: one pool of intra-op threads for the forward pass of the device thread.
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its warnings are about its own choices
        try:
            self.session = ort.InferenceSession(
                str(checked.path), options, providers=_providers(device)
            )
        except Exception as exc:  # onnxruntime raises its own pybind exceptions
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise ModelLoadError(f"{GRAPH_FILE}: ONNX Runtime cannot load it: {first}") from None
        self.inputs = tuple(_spec(arg) for arg in self.session.get_inputs())
        self.outputs = tuple(_spec(arg) for arg in self.session.get_outputs())
        self._bound = any(spec.dtype == "bfloat16" for spec in (*self.inputs, *self.outputs))
        logger.info(
            "ONNX Runtime %s session on %s (%s), %d intra-op threads: inputs %s, outputs %s",
            ort.__version__, device, ", ".join(self.session.get_providers()),
            options.intra_op_num_threads, [i.name for i in self.inputs],
            [o.name for o in self.outputs],
        )  # fmt: skip

    def run(
        self, feeds: Mapping[str, npt.NDArray[Any]], outputs: Sequence[str] | None = None
    ) -> list[npt.NDArray[Any]]:
        """The outputs named (all, in the graph's order, when None) for the feeds."""
        if self._bound:
            return self._run_bound(feeds, outputs)
        return self.session.run(None if outputs is None else list(outputs), dict(feeds))  # type: ignore[no-any-return]

    def _run_bound(
        self, feeds: Mapping[str, npt.NDArray[Any]], outputs: Sequence[str] | None
    ) -> list[npt.NDArray[Any]]:
        """`run` through an I/O binding, for a graph with bfloat16 tensors: ONNX Runtime turns
        no numpy array into bfloat16 or back, so those go in and come out as their bytes."""
        binding = self.session.io_binding()
        held = []  # the arrays the bound values point into, alive until the run ends
        for name, array in feeds.items():
            array = np.ascontiguousarray(array)
            held.append(array)
            if array.dtype == ml_dtypes.bfloat16:
                binding.bind_ortvalue_input(
                    name,
                    ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                        array.view(np.uint16), TensorProto.BFLOAT16
                    ),
                )
            else:
                binding.bind_cpu_input(name, array)
        for name in [spec.name for spec in self.outputs] if outputs is None else outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return [_array(value) for value in binding.get_outputs()]

    def is_oom(self, exc: BaseException) -> bool:
        message = str(exc).lower()
        return "failed to allocate memory" in message or "out of memory" in message

    def is_fatal(self, exc: BaseException) -> bool:
        """A CUDA error other than out-of-memory: the context is poisoned."""
        message = str(exc)
        return (
            self.device.type == "cuda"
            and ("CUDA failure" in message or "CUDA error" in message)
            and not self.is_oom(exc)
        )

    def release_memory(self) -> None:
        """Nothing to hand back by hand: ONNX Runtime's arena keeps what it allocated."""


def _providers(device: torch.device) -> list[Any]:
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelLoadError(
            f"device {device} needs ONNX Runtime's CUDA execution provider, which this "
            f"onnxruntime lacks (it has {', '.join(ort.get_available_providers())}): install "
            "onnxruntime-gpu in place of onnxruntime"
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def _array(value: Any) -> npt.NDArray[Any]:
    """An output OrtValue on the host as numpy, bfloat16 copied from its bytes."""
    if value.data_type() != "tensor(bfloat16)":
        return value.numpy()  # type: ignore[no-any-return]
    raw = ctypes.string_at(value.data_ptr(), value.tensor_size_in_bytes())
    return np.frombuffer(raw, dtype=ml_dtypes.bfloat16).reshape(value.shape())


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in _ORT_TYPES:
        raise ModelLoadError(
            f"{GRAPH_FILE}: {arg.name!r} is a {arg.type}; served tensors are numbers or "
            f"booleans ({', '.join(_ORT_TYPES)})"
        )
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(arg.name, _ORT_TYPES[arg.type], shape)
