"""What runs a text model's forward pass: a torch encoder with its head, or an ONNX graph.

The text recipes (`text_model.TextModel`, `cross_encoder.CrossEncoder`) tokenize, collate and
finish the same way whatever runs the pass between collate and finish; a `Backend` is that pass
and the facts of the device it runs on. Each backend gives one float32 row per item of a batch
(filler rows of a padded shape dropped), one of three kinds (`OUTPUTS`):

    pooled          (N, D)  sentence embeddings before normalisation (embed)
    probabilities   (N, L)  label probabilities, the model's own activation applied (classify)
    logits          (N, L)  raw logits (rerank: one label, activated per request in finish)
"""

from __future__ import annotations

import functools
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt
import torch

from sidecar.models.bert import BertEncoder, Layer
from sidecar.models.device import OnTorchDevice
from sidecar.models.graphs import Capture, GraphRunner
from sidecar.models.pooling import pool
from sidecar.models.tokens import Batch

OUTPUTS = ("pooled", "probabilities", "logits")

Rows = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Head:
    """What a text recipe asks of its backend's rows.

    Attributes:
        output: one of `OUTPUTS`.
        pooling: `pooled`: the pooling modes, concatenated in this order.
        multi_label: `probabilities`: a sigmoid per label instead of a softmax over them.
    """

    output: str
    pooling: tuple[str, ...] = ("mean",)
    multi_label: bool = False

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output {self.output!r} is not one of {OUTPUTS}")


class Backend(Protocol):
    """The forward pass of a text recipe, and how to read the errors of its device.

    Attributes:
        device: where batches are collated for it (pinned host memory when CUDA).
        dtype: the dtype it computes in.
        name: `torch` or `onnxruntime` (the model card's `backend`).
    """

    device: torch.device
    dtype: torch.dtype
    name: str

    def run(self, batch: Batch) -> Rows:
        """One float32 row per item of the batch (filler rows dropped)."""
        ...

    @property
    def steps(self) -> int:
        """How many steps `run_steps` takes (1: the pass cannot pause)."""
        ...

    def run_steps(self, batch: Batch) -> Generator[None, None, Rows]:
        """`run` in `steps` steps, pausing (yielding) between each two."""
        ...

    def is_oom(self, exc: BaseException) -> bool: ...

    def is_fatal(self, exc: BaseException) -> bool: ...

    def release_memory(self) -> None: ...

    def capture(self, shapes: Sequence[tuple[int, int]]) -> bool:
        """Capture CUDA graphs of these (rows, length) shapes where the backend has them (after
        warm-up passes of each, on the device thread); whether any was captured."""
        ...


class TorchBackend(OnTorchDevice):
    """A BERT-family encoder in torch and what follows it: pooling in fp32, or its head.

    Args:
        encoder: the encoder, with a classification head unless the head's output is `pooled`.
        head: what to give.
        capture: with CUDA graphs made by this (`graphs.CudaCapture`; `graphs.RerunCapture`
            for the dry path): batches of a captured shape replay its graph (see graphs.py).
    """

    name = "torch"

    def __init__(self, encoder: BertEncoder, head: Head, capture: Capture | None = None) -> None:
        self.encoder = encoder
        self.head = head
        weight = encoder.embeddings.word.weight
        self.device = weight.device
        self.dtype = weight.dtype
        # The graphs' pass holds the encoder and head, not the backend: no reference cycle, so
        # the graphs go as soon as the model does.
        graphed = functools.partial(masked_rows, encoder, head)
        self.graphs = None if capture is None else GraphRunner(graphed, self.device, capture)

    @property
    def steps(self) -> int:
        """How many steps `run_steps` takes: the embeddings, then two per encoder layer."""
        return 1 + 2 * len(self.encoder.layers)

    def run(self, batch: Batch) -> Rows:
        with torch.inference_mode():
            rows = None if self.graphs is None else self.graphs.replay(batch)
            if rows is None:
                hidden, mask = self.encoder.encode(batch)  # (B, T, H), (B, T)
                rows = head_rows(self.encoder, self.head, hidden, mask)
            return rows[: batch.num_items].cpu().numpy()

    def run_steps(self, batch: Batch) -> Generator[None, None, Rows]:
        """`run` in `steps` steps with a pause between each two: the eager pass's rows bit for bit.

        The device thread can run another pass at a pause (an interactive batch while this one
        is a job's), so a job's batch delays it by one step (half a layer) instead of a whole
        pass. Each step enters inference mode itself: only tensors are held across a pause, and
        a pass that is dropped at a pause leaves no mode behind on any thread. Always eager
        (never a CUDA graph): its steps are not the shapes captured.
        """
        with torch.inference_mode():
            hidden, mask, attention = self.encoder.embed(batch)
        for layer in cast("Iterable[Layer]", self.encoder.layers):
            self._step_done()
            yield
            with torch.inference_mode():
                hidden = layer.attend(hidden, attention)
            self._step_done()
            yield
            with torch.inference_mode():
                hidden = layer.feed(hidden)
        with torch.inference_mode():
            rows = head_rows(self.encoder, self.head, hidden, mask)
            return rows[: batch.num_items].cpu().numpy()

    def _step_done(self) -> None:
        """On CUDA, wait for the step's kernels: a pause is then a real one (an interactive
        batch's kernels queue behind this step's alone, not the whole pass's), and a step's
        time is its device time, which the batcher counts."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def capture(self, shapes: Sequence[tuple[int, int]]) -> bool:
        if self.graphs is None:
            return False
        with torch.inference_mode():
            self.graphs.capture(shapes)
        return bool(self.graphs.shapes)


def masked_rows(
    encoder: BertEncoder,
    head: Head,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """The head's rows (B, D) float32 of device inputs (B, T), the mask always applied (the
    pass a CUDA graph records)."""
    return head_rows(encoder, head, encoder(input_ids, token_type_ids, mask), mask)


def head_rows(
    encoder: BertEncoder, head: Head, hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The head's rows (B, D) float32 on the device, from token states (B, T, H)."""
    if head.output == "pooled":
        hidden = hidden.float()  # (B, T, H): pool in fp32 whatever the model dtype
        return pool(hidden, mask.to(hidden.dtype), head.pooling)  # (B, D)
    logits = encoder.classify(hidden).float()  # (B, L)
    if head.output == "probabilities":
        logits = activate(logits, multi_label=head.multi_label)
    return logits


def activate(logits: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Label probabilities (B, L) from logits (B, L): a sigmoid each, or a softmax over them."""
    return torch.sigmoid(logits) if multi_label else logits.softmax(-1)
