"""The one interface every model family implements, and the inputs and results it speaks.

A request's inputs go through a model in four steps (DESIGN section 11):

    prepare(inputs)          -> Prepared(items, costs)   validate, tokenize, truncate
    cache_key(item)          -> bytes | None             what determines the item's output
    collate(items, shape)    -> batch                    pad a batch of items (batcher thread)
    forward(batch)           -> outputs, one per item    the forward pass (the device thread)
    finish(outputs, inputs)  -> Result                   normalise, activate, label

Texts (`TextInputs`) and pairs (`PairInputs`) go to text models; named tensors (`TensorInputs`)
to tensor models (task `tensor`: an ONNX graph served as it is), whose card describes the graph's
inputs and outputs (`TensorSpec`) and whose results are `Tensors`.

The serving layer runs `prepare` and `finish` for a request and hands `collate` and `forward` to
the batcher, which may mix the items of many requests in one batch. `run_inline` is the same
recipe without a batcher, for benchmarks and parity tests.

This module imports neither torch nor a tokenizer, so that the protocols and the serving layer
can name these types without importing what the models need.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

ItemT = TypeVar("ItemT")
BatchT = TypeVar("BatchT")
OutputT = TypeVar("OutputT")

# (items, longest) -> (rows, length): the padded shape a batch runs as, when the serving layer
# buckets shapes (batching.Buckets). Rows past the items are filler, whose outputs are dropped.
PadShape = Callable[[int, int], tuple[int, int]]

# A text may have this many characters per token of the model's input limit before it is
# tokenized: longer, it is refused, or cut there when truncation is asked, unseen by the tokenizer
# (TEI caps characters at a multiple of its max input length too). A request's tokenizing time and
# memory then follow its input count and the limit, not its bytes: tokenizing takes up to ~650
# bytes and 5 us a character when every character is a token. English runs 4-5 characters a token.
MAX_CHARS_PER_TOKEN = 16


# -- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextInputs:
    """Texts to embed or classify, one item each.

    Attributes:
        texts: the inputs, in order.
        truncate: cut inputs over the token limit to it, instead of refusing them.
        normalize: embeddings only: scale each vector to unit length.
    """

    texts: Sequence[str]
    truncate: bool = False
    normalize: bool = True

    @property
    def num_chars(self) -> int:
        return sum(map(len, self.texts))

    def num_chars_within(self, max_chars: int) -> int:
        """Characters the tokenizer sees at most, each text cut at `max_chars`."""
        return sum(min(len(text), max_chars) for text in self.texts)


@dataclass(frozen=True)
class PairInputs:
    """A query and the documents to score against it, one (query, document) item each.

    Attributes:
        query: the query, paired with every document.
        documents: the documents, in order.
        truncate: cut pairs over the token limit (from the document's end) instead of refusing.
        raw_scores: return the model's logits instead of its activation (sigmoid) of them.
    """

    query: str
    documents: Sequence[str]
    truncate: bool = False
    raw_scores: bool = False

    @property
    def num_chars(self) -> int:
        return len(self.query) * len(self.documents) + sum(map(len, self.documents))

    def num_chars_within(self, max_chars: int) -> int:
        """Characters the tokenizer sees at most, the query and each document cut at `max_chars`."""
        query = min(len(self.query), max_chars)
        return sum(query + min(len(document), max_chars) for document in self.documents)


@dataclass(frozen=True)
class TensorInputs:
    """Named arrays that hold a batch of items along their first axis, one item per row.

    Every array has the same number of rows; row i of each is item i. Within one request the
    other dimensions are one shape per name (a rectangular tensor), as the Open Inference
    Protocol sends them.

    Attributes:
        tensors: input name -> (N, ...) array, in the dtype the graph declares.
        outputs: the output names to return, in this order (None: every output of the graph).
    """

    tensors: Mapping[str, npt.NDArray[Any]]
    outputs: tuple[str, ...] | None = None

    @property
    def num_chars(self) -> int:
        """The elements of every array: what preparing them costs (the engine prepares large
        inputs off the event loop by this measure, as it weighs texts by characters)."""
        return sum(int(array.size) for array in self.tensors.values())

    def num_chars_within(self, max_chars: int) -> int:
        return self.num_chars


Inputs = TextInputs | PairInputs | TensorInputs


@dataclass(frozen=True)
class Prepared(Generic[ItemT]):
    """A request's items, ready for the batcher, and what each costs (its token count)."""

    items: list[ItemT]
    costs: list[int]

    @property
    def num_tokens(self) -> int:
        return sum(self.costs)


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Embeddings:
    """One vector per input text: (N, D) float32, unit length when normalisation was asked."""

    vectors: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Classification:
    """The most likely label of one input, and the score of every label."""

    label: str
    score: float
    scores: dict[str, float]


@dataclass(frozen=True)
class Classifications:
    """One classification per input text, in order."""

    items: list[Classification]


@dataclass(frozen=True)
class Scores:
    """One relevance score per document, in order: (N,) float32."""

    values: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Tensors:
    """A tensor model's outputs: output name -> (N, ...) array, one row per input item."""

    outputs: dict[str, npt.NDArray[Any]]


Result = Embeddings | Classifications | Scores | Tensors


# -- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a graph, as its metadata describes it.

    Attributes:
        name: the graph's name for it.
        dtype: numpy's name of its element type (`float32`, `int64`, `bool`, ...).
        shape: its dimensions, -1 where the graph leaves one free; the first is the batch axis.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelCard:
    """What a loaded model is, as far as the serving layer and the protocols need to know.

    Attributes:
        task: the task it serves (one of `TASKS`).
        architecture: config.json's architecture, or a description of the family.
        device: where it runs (`cpu`, `cuda:0`).
        dtype: its parameters' dtype (`float32`, `bfloat16`, ...).
        max_input_tokens: the longest input it accepts, special tokens included.
        embedding_dim: embed: the vector length.
        labels: classify: the label names, in index order.
        pooling: embed: the pooling modes the snapshot declares, concatenated in this order.
        snapshot_normalizes: embed: the snapshot's pipeline ends with a Normalize module.
        device_uuid: the GPU's UUID when on one (NVML finds it by that), else None.
        backend: what runs the forward pass: `torch` or `onnxruntime`.
        inputs: tensor: the graph's inputs, in its order.
        outputs: tensor: the graph's outputs, in its order.

    For a tensor model, `max_input_tokens` bounds an item's cost: the product of its sizes on
    the axes after the first that the graph leaves free (1 when it fixes them all).
    """

    task: str
    architecture: str
    device: str
    dtype: str
    max_input_tokens: int
    embedding_dim: int | None = None
    labels: tuple[str, ...] | None = None
    pooling: tuple[str, ...] | None = None
    snapshot_normalizes: bool = False
    device_uuid: str | None = None
    backend: str = "torch"
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None


class Model(Protocol[ItemT, BatchT, OutputT]):
    """A loaded model of any family; see the module docstring for the order of the steps."""

    @property
    def card(self) -> ModelCard: ...

    def prepare(self, inputs: Inputs) -> Prepared[ItemT]:
        """Check and encode a request's inputs.

        Raises:
            InputError: the inputs do not suit the model (wrong kind, too long, ...).
        """
        ...

    def cache_key(self, item: ItemT) -> bytes | None:
        """Bytes that fully determine the item's output of `forward` on this loaded model (the
        response cache's key, with the model version), or None when it cannot be cached."""
        ...

    def collate(self, items: Sequence[ItemT], shape: PadShape | None = None) -> BatchT:
        """A batch of the items, padded to the longest or to the shape `shape` gives."""
        ...

    def forward(self, batch: BatchT) -> Iterable[OutputT]:
        """One output per item, in order (an array's rows will do)."""
        ...

    def finish(self, outputs: Sequence[OutputT], inputs: Inputs) -> Result: ...

    def warmup(
        self, max_batch: int, max_tokens: int, shapes: Sequence[tuple[int, int]] | None = None
    ) -> list[tuple[int, float]]:
        """Run forward passes across shapes (or exactly `shapes`, (items, tokens) each) within
        the bounds; returns (padded tokens, seconds) of each."""
        ...

    def is_oom(self, exc: BaseException) -> bool:
        """`exc` from `forward` says the device ran out of memory (recoverable)."""
        ...

    def is_fatal(self, exc: BaseException) -> bool:
        """`exc` from `forward` says the device is unusable until the process restarts."""
        ...

    def release_memory(self) -> None:
        """Return cached device memory after an out-of-memory error (on the device thread)."""
        ...


@runtime_checkable
class SteppedModel(Protocol):
    """A model whose forward pass can pause between steps (a BERT-family encoder in torch:
    between its layers). The batcher runs a job's batches this way, so that an interactive
    batch waits for one step of it rather than the whole pass (`batching.lanes`)."""

    @property
    def steps(self) -> int:
        """How many steps `forward_steps` takes (1: the pass cannot pause)."""
        ...

    def forward_steps(self, batch: Any) -> Generator[None, None, Iterable[Any]]:
        """`forward`, yielding between steps; each step runs on the device thread."""
        ...


@dataclass(frozen=True)
class LoadOptions:
    """How to build a model from a snapshot; `device` and `dtype` are torch objects.

    With the `onnx` backend the graph fixes the dtype: None takes it as it is; a dtype given
    must be the graph's.
    """

    device: Any
    dtype: Any
    task: str | None = None
    max_input_tokens: int | None = None
    backend: str = "torch"
    # Task `generate`: what sizes the KV cache (`sidecar.models.decoder.GenerationLimits`).
    generation: Any = None
    # CUDA graphs of the torch encoders' passes, one per warm-up shape (sidecar.models.graphs).
    cuda_graphs: bool = False


@dataclass(frozen=True)
class Family:
    """One model family: which checkpoints it builds, for which tasks, and how.

    Attributes:
        name: a short name for logs and errors.
        model_types: the config.json `model_type` values it builds.
        tasks: the tasks it can serve.
        detect: the task it serves a snapshot with when none is asked for, or None to leave the
            snapshot to the next family; called with config.json and the snapshot directory.
        load: builds the model from the snapshot directory and its tensors by checkpoint name.
        backend: what runs it (`torch`, or `onnx`: a graph in the directory, no checkpoint).
            An empty `model_types` takes any config.json, or none.
    """

    name: str
    model_types: tuple[str, ...]
    tasks: tuple[str, ...]
    detect: Callable[[Mapping[str, Any], Path], str | None]
    load: Callable[[Path, Mapping[str, Any], LoadOptions], Model[Any, Any, Any]]
    backend: str = "torch"


def run_inline(
    model: Model[ItemT, BatchT, OutputT],
    inputs: Inputs,
    *,
    batch_size: int = 32,
    by_length: bool = True,
) -> Result:
    """The whole recipe in the calling thread, without a batcher: for benchmarks and tests.

    Args:
        model: any loaded model.
        inputs: one request's inputs.
        batch_size: items per forward pass.
        by_length: sort the items by cost before batching (least padding), as the server's
            length grouping does; False keeps arrival order.
    """
    prepared = model.prepare(inputs)
    count = len(prepared.items)
    order = list(range(count))
    if by_length:
        order.sort(key=prepared.costs.__getitem__)
    outputs: list[OutputT | None] = [None] * count
    for start in range(0, count, batch_size):
        chunk = order[start : start + batch_size]
        batch = model.collate([prepared.items[i] for i in chunk])
        for index, output in zip(chunk, model.forward(batch), strict=True):
            outputs[index] = output
    return model.finish(outputs, inputs)  # type: ignore[arg-type]
