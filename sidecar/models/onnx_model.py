"""The ONNX backend (SIDECAR_BACKEND=onnx): a model directory holding `model.onnx`.

With a tokenizer beside it (tokenizer.json and config.json, as `sidecar export onnx` writes
them, or an optimum / sentence-transformers export of a BERT-family model) the graph is the
encoder of a text model with the same recipe, routes and tasks as the torch families (embed,
classify, rerank: text_model.build and cross_encoder.build with an `OnnxBackend`). Without a
tokenizer it serves its own tensors (task `tensor`, tensor_model.TensorModel).

The graph's outputs a text model reads, by name:

    sentence_embedding   (B, D) pooled, when metadata `sidecar.pooling` names the snapshot's
                         pooling (sidecar export puts the pooling inside the graph)
    last_hidden_state    (B, T, H) token states, pooled here as the torch backend pools them
      or token_embeddings
    probabilities        (B, L) label probabilities (sidecar export, classify)
    logits               (B, L) logits: activated here for classify, raw for rerank
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sidecar.models import cross_encoder, text_model
from sidecar.models.backend import Head, Rows, activate
from sidecar.models.bert import BertConfig
from sidecar.models.device import dtype_name
from sidecar.models.errors import ModelLoadError
from sidecar.models.interface import Family, LoadOptions, Model
from sidecar.models.pooling import pool
from sidecar.models.snapshot import read_json
from sidecar.models.tokens import Batch

if TYPE_CHECKING:
    from sidecar.models.onnx_graph import Graph

# onnx and onnxruntime (onnx_graph, tensor_model) are imported when an ONNX model loads: the
# torch backend's start-up does not pay for them.
GRAPH_FILE = "model.onnx"
TASKS = ("embed", "classify", "rerank", "tensor")
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TOKEN_STATES = ("last_hidden_state", "token_embeddings")


def has_graph(directory: Path) -> bool:
    """The directory holds an ONNX graph (`model.onnx`; a symlink counts, to be checked)."""
    return os.path.lexists(directory / GRAPH_FILE)


class OnnxBackend:
    """A text recipe's forward pass on an ONNX graph of its encoder (see the module docstring
    for the outputs it reads)."""

    name = "onnxruntime"

    def __init__(self, graph: Graph, head: Head) -> None:
        self.device = graph.device
        self.dtype = graph.dtype
        self._graph = graph
        self._head = head
        inputs = {spec.name: spec.dtype for spec in graph.inputs}
        unknown = sorted(set(inputs) - set(TEXT_INPUTS))
        if "input_ids" not in inputs or unknown:
            raise ModelLoadError(
                f"{GRAPH_FILE}: a text model's graph takes input_ids and optionally "
                f"attention_mask and token_type_ids, not {sorted(inputs)}"
            )
        self._inputs = inputs
        outputs = {spec.name for spec in graph.outputs}
        self._output, self._pool, self._activate = _output(outputs, head, graph.metadata)

    steps = 1  # a graph runs whole

    def run_steps(self, batch: Batch) -> Generator[None, None, Rows]:
        """`run` in one step."""
        yield from ()
        return self.run(batch)

    def run(self, batch: Batch) -> Rows:
        items = batch.num_items
        tensors = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "token_type_ids": batch.token_type_ids,
        }
        feeds = {
            name: tensors[name].numpy().astype(dtype, copy=False)
            for name, dtype in self._inputs.items()
        }
        (out,) = self._graph.run(feeds, [self._output])
        rows = torch.from_numpy(out[:items]).float()
        if self._pool:
            mask = batch.attention_mask[:items].to(rows.dtype)  # (N, T)
            rows = pool(rows, mask, self._head.pooling)  # (N, T, H) -> (N, D)
        elif self._activate:
            rows = activate(rows, multi_label=self._head.multi_label)
        return rows.numpy()

    def is_oom(self, exc: BaseException) -> bool:
        return self._graph.is_oom(exc)

    def is_fatal(self, exc: BaseException) -> bool:
        return self._graph.is_fatal(exc)

    def release_memory(self) -> None:
        self._graph.release_memory()

    def capture(self, shapes: Sequence[tuple[int, int]]) -> bool:
        """No CUDA graphs of ours: ONNX Runtime runs the graph as it is."""
        return False


def _output(outputs: set[str], head: Head, metadata: Mapping[str, str]) -> tuple[str, bool, bool]:
    """(the output to read, pool it, activate it) for `head`."""
    if head.output == "pooled":
        if "sentence_embedding" in outputs and metadata.get("sidecar.pooling") == ",".join(
            head.pooling
        ):
            return "sentence_embedding", False, False
        states = next((name for name in TOKEN_STATES if name in outputs), None)
        if states is not None:
            return states, True, False
        wanted = (
            f"sentence_embedding (pooled {'+'.join(head.pooling)}) or {' or '.join(TOKEN_STATES)}"
        )
    elif head.output == "probabilities":
        if "probabilities" in outputs:
            return "probabilities", False, False
        if "logits" in outputs:
            return "logits", False, True
        wanted = "probabilities or logits"
    else:
        if "logits" in outputs:
            return "logits", False, False
        wanted = "logits"
    raise ModelLoadError(
        f"{GRAPH_FILE}: the graph gives {sorted(outputs)}; this task reads {wanted}"
    )


def detect(config: Mapping[str, Any], directory: Path) -> str | None:
    """`tensor` without a tokenizer; with one, the task the torch families would detect."""
    if not (directory / "tokenizer.json").is_file():
        return "tensor"
    return cross_encoder.detect(config, directory) or text_model.detect(config, directory)


def load(directory: Path, weights: Mapping[str, Any], options: LoadOptions) -> Model[Any, Any, Any]:
    """Check and load `model.onnx`, and build the model of the task (None: `detect`).

    Raises:
        ModelLoadError: the graph fails a check (see onnx_graph.check_graph), runs in another
            dtype than asked, or does not suit the task.
    """
    from sidecar.models.onnx_graph import Graph, check_graph
    from sidecar.models.tensor_model import TensorModel

    checked = check_graph(directory)
    if options.dtype is not None and options.dtype != checked.dtype:
        raise ModelLoadError(
            f"{GRAPH_FILE} computes in {dtype_name(checked.dtype)}, not "
            f"{dtype_name(options.dtype)}: an ONNX graph runs in the dtype it was exported in"
        )
    graph = Graph(checked, options.device)
    config = read_json(directory, "config.json") if (directory / "config.json").is_file() else {}
    task = options.task or detect(config, directory)
    if task == "tensor":
        return TensorModel(graph, max_item_size=options.max_input_tokens)
    if not (directory / "tokenizer.json").is_file():
        raise ModelLoadError(f"task {task!r} of an ONNX graph needs a tokenizer.json beside it")

    def backend(config: BertConfig, head: Head) -> OnnxBackend:
        return OnnxBackend(graph, head)

    if task == "rerank":
        return cross_encoder.build(directory, options, backend)
    return text_model.build(directory, options, backend)


FAMILY = Family("ONNX graph", (), TASKS, detect, load, backend="onnx")
