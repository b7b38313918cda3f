"""An ONNX graph served as it is: task `tensor`, named arrays in, named arrays out.

Every input and output of the graph must leave its first axis free: that is the batch axis, and
an item is one row of each input. A request's arrays (`TensorInputs`) are checked against the
graph (names, dtypes, ranks, the sizes it fixes) and split into items; the batcher mixes the
items of many requests; `collate` stacks items whose other dimensions agree into one run of the
graph each, so items of different shapes never share a tensor; `finish` stacks a request's rows
of each output back into (N, ...) arrays (`Tensors`).

An item's cost, which the batcher sums and groups by, is the product of its sizes on the axes the
graph leaves free after the first (1 when the graph fixes them all): items of one size then go
together, and `SIDECAR_BATCH_MAX_TOKENS` bounds the work of a batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sidecar.models.device import dtype_name
from sidecar.models.errors import InputError, InputTooLongError, ModelLoadError, WrongInputsError
from sidecar.models.interface import (
    Inputs,
    ModelCard,
    PadShape,
    Prepared,
    Result,
    TensorInputs,
    Tensors,
    TensorSpec,
)
from sidecar.models.onnx_graph import Graph
from sidecar.models.onnx_model import GRAPH_FILE

logger = logging.getLogger(__name__)

# The largest item cost a graph with free axes after the first takes unless told
# (SIDECAR_MAX_INPUT_TOKENS): SIDECAR_BATCH_MAX_TOKENS's default, so one item always fits a batch.
DEFAULT_MAX_ITEM_SIZE = 16384

Array = npt.NDArray[Any]
Item = dict[str, Array]  # input name -> one row (the batch axis dropped)


@dataclass(frozen=True)
class TensorBatch:
    """Items grouped by shape: each group's item indices and its stacked inputs, run as one.

    A group may hold filler rows after its items (copies of its first, to fill a padded shape):
    their outputs are dropped.
    """

    groups: tuple[tuple[tuple[int, ...], dict[str, Array]], ...]
    num_items: int


class TensorModel:
    """A graph's own inputs and outputs, batched along their first axis.

    Args:
        graph: the session on a checked graph.
        max_item_size: the largest item cost taken (see the module docstring).
    """

    def __init__(self, graph: Graph, *, max_item_size: int | None = None) -> None:
        fixed_batch = [s.name for s in (*graph.inputs, *graph.outputs) if s.shape[:1] != (-1,)]
        if fixed_batch:
            raise ModelLoadError(
                f"{GRAPH_FILE}: {', '.join(repr(n) for n in fixed_batch)} must leave the first "
                "axis free (the batch axis; export with a dynamic first dimension)"
            )
        self._graph = graph
        self._inputs = {spec.name: spec for spec in graph.inputs}
        self._output_names = tuple(spec.name for spec in graph.outputs)
        self._free = {
            spec.name: tuple(axis for axis, size in enumerate(spec.shape) if axis and size == -1)
            for spec in graph.inputs
        }
        fixed = not any(self._free.values())
        self.max_item_size = 1 if fixed else max_item_size or DEFAULT_MAX_ITEM_SIZE
        self.device = graph.device
        self.dtype = graph.dtype

    @property
    def card(self) -> ModelCard:
        return ModelCard(
            task="tensor",
            architecture=self._graph.metadata.get("sidecar.architecture", "ONNX graph"),
            device=str(self.device),
            dtype=dtype_name(self.dtype),
            max_input_tokens=self.max_item_size,
            backend=self._graph.name,
            inputs=self._graph.inputs,
            outputs=self._graph.outputs,
        )

    def prepare(self, inputs: Inputs) -> Prepared[Item]:
        """Check the arrays against the graph and split them into one item per row.

        Raises:
            WrongInputsError: texts or pairs, not tensors.
            InputError: a missing or unknown name, a wrong dtype, rank or fixed size, row counts
                that differ, an unknown output asked for.
            InputTooLongError: an item's cost over `max_item_size`.
        """
        if not isinstance(inputs, TensorInputs):
            raise WrongInputsError("this model serves 'tensor': it takes named tensors")
        given, wanted = set(inputs.tensors), set(self._inputs)
        if given != wanted:
            missing, unknown = sorted(wanted - given), sorted(given - wanted)
            raise InputError(
                f"the graph takes inputs {sorted(wanted)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
            )
        unknown_outputs = sorted(set(inputs.outputs or ()) - set(self._output_names))
        if unknown_outputs:
            raise InputError(
                f"unknown outputs {unknown_outputs}; the graph gives {list(self._output_names)}"
            )
        rows = {self._check(self._inputs[n], a) for n, a in inputs.tensors.items()}
        if len(rows) != 1:
            raise InputError(f"the inputs hold different numbers of rows: {sorted(rows)}")
        count = rows.pop()
        cost = max(
            math.prod(array.shape[axis] for axis in self._free[name])
            for name, array in inputs.tensors.items()
        )
        if cost > self.max_item_size:
            raise InputTooLongError(
                f"an item spans {cost} elements on the graph's free axes, more than the limit "
                f"of {self.max_item_size}"
            )
        items = [{name: inputs.tensors[name][row] for name in self._inputs} for row in range(count)]
        return Prepared(items, [max(cost, 1)] * count)

    def _check(self, spec: TensorSpec, array: Array) -> int:
        """The rows of `array`, once its dtype, rank and fixed sizes match `spec`."""
        if not isinstance(array, np.ndarray) or array.dtype != np.dtype(spec.dtype):
            kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise InputError(f"input {spec.name!r} is {kind}; the graph takes {spec.dtype}")
        if array.ndim != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
        ):
            raise InputError(
                f"input {spec.name!r} has shape {list(array.shape)}; the graph takes "
                f"{list(spec.shape)} (-1: any size)"
            )
        if array.shape[0] == 0:
            raise InputError(f"input {spec.name!r} has no rows")
        return int(array.shape[0])

    def cache_key(self, item: Item) -> bytes | None:
        """Each input's dtype, shape and bytes, in the graph's order; None for object arrays
        (their bytes are pointers, not values)."""
        parts = []
        for name in self._inputs:
            row = item[name]
            if row.dtype.hasobject:
                return None
            parts.append(f"{row.dtype.str}{row.shape};".encode())
            parts.append(np.ascontiguousarray(row).tobytes())
        return b"".join(parts)

    def collate(self, items: Sequence[Item], shape: PadShape | None = None) -> TensorBatch:
        """Stack the items, one group per shape; with `shape`, each group padded to the rows it
        gives (filler rows: copies of the group's first)."""
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for index, item in enumerate(items):
            key = tuple(item[name].shape for name in self._inputs)
            groups.setdefault(key, []).append(index)
        stacked = []
        for indices in groups.values():
            rows = len(indices)
            if shape is not None:
                rows = max(rows, shape(rows, 1)[0])
            feeds = {}
            for name in self._inputs:
                parts = [items[i][name] for i in indices]
                parts += [parts[0]] * (rows - len(indices))
                feeds[name] = np.stack(parts)  # (rows, ...)
            stacked.append((tuple(indices), feeds))
        return TensorBatch(tuple(stacked), len(items))

    def forward(self, batch: TensorBatch) -> list[Item]:
        """Each item's row of every output, in item order: one run of the graph per group."""
        results: list[Item | None] = [None] * batch.num_items
        for indices, feeds in batch.groups:
            outputs = self._graph.run(feeds)
            for name, output in zip(self._output_names, outputs, strict=True):
                rows = next(iter(feeds.values())).shape[0]
                if output.shape[:1] != (rows,):
                    raise RuntimeError(
                        f"output {name!r} has shape {list(output.shape)} for {rows} input rows"
                    )
            for position, index in enumerate(indices):
                row = {n: o[position] for n, o in zip(self._output_names, outputs, strict=True)}
                results[index] = row
        return results  # type: ignore[return-value]

    def finish(self, outputs: Sequence[Item], inputs: Inputs) -> Result:
        """The outputs asked for (every output when none were), each stacked to (N, ...)."""
        names = self._output_names
        if isinstance(inputs, TensorInputs) and inputs.outputs is not None:
            names = inputs.outputs
        return Tensors({name: np.stack([item[name] for item in outputs]) for name in names})

    def warmup(
        self, max_batch: int, max_tokens: int, shapes: Sequence[tuple[int, int]] | None = None
    ) -> list[tuple[int, float]]:
        """Runs of zeros of one item and of `max_batch` items (or of each item count of
        `shapes`); none when the graph leaves axes after the first free (no size to guess).

        Returns:
            (items, seconds) of each count's second run (the first also allocates).
        """
        if self.max_item_size != 1:
            logger.info("no warm-up: the graph leaves sizes after the batch axis free")
            return []
        counts = sorted({n for n, _ in shapes} if shapes else {1, max(1, max_batch)})
        timings = []
        for count in counts:
            feeds = {
                name: np.zeros((count, *spec.shape[1:]), dtype=spec.dtype)
                for name, spec in self._inputs.items()
            }
            self._graph.run(feeds)
            started = time.perf_counter()
            self._graph.run(feeds)
            timings.append((count, time.perf_counter() - started))
        logger.info("warmed up on %d batch sizes: %s", len(counts), counts)
        return timings

    def is_oom(self, exc: BaseException) -> bool:
        return self._graph.is_oom(exc)

    def is_fatal(self, exc: BaseException) -> bool:
        return self._graph.is_fatal(exc)

    def release_memory(self) -> None:
        self._graph.release_memory()
