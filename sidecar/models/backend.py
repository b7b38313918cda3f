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

from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt
import torch

from sidecar.models.bert import BertEncoder, Layer
from sidecar.models.device import OnTorchDevice
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


class TorchBackend(OnTorchDevice):
    """A BERT-family encoder in torch and what follows it: pooling in fp32, or its head.

    Args:
        encoder: the encoder, with a classification head unless the head's output is `pooled`.
        head: what to give.
    """

    name = "torch"

    def __init__(self, encoder: BertEncoder, head: Head) -> None:
        self.encoder = encoder
        self.head = head
        weight = encoder.embeddings.word.weight
        self.device = weight.device
        self.dtype = weight.dtype

    @property
    def steps(self) -> int:
        """How many steps `run_steps` takes: the embeddings, then two per encoder layer."""
        return 1 + 2 * len(self.encoder.layers)

    def run(self, batch: Batch) -> Rows:
        with torch.inference_mode():
            hidden, mask = self.encoder.encode(batch)  # (B, T, H), (B, T)
            return self._rows(hidden, mask, batch.num_items)

    def run_steps(self, batch: Batch) -> Generator[None, None, Rows]:
        """`run` in `steps` steps with a pause between each two, the same rows bit for bit.

        The device thread can run another pass at a pause (an interactive batch while this one
        is a job's), so a job's batch delays it by one step (half a layer) instead of a whole
        pass. Each step
        enters inference mode itself: only tensors are held across a pause, and a pass that is
        dropped at a pause leaves no mode behind on any thread.
        """
        with torch.inference_mode():
            hidden, mask, attention = self.encoder.embed(batch)
        for layer in cast("Iterable[Layer]", self.encoder.layers):
            yield
            with torch.inference_mode():
                hidden = layer.attend(hidden, attention)
            yield
            with torch.inference_mode():
                hidden = layer.feed(hidden)
        with torch.inference_mode():
            return self._rows(hidden, mask, batch.num_items)

    def _rows(self, hidden: torch.Tensor, mask: torch.Tensor, items: int) -> Rows:
        """What the head gives of token states (B, T, H): the first `items` rows."""
        if self.head.output == "pooled":
            hidden = hidden.float()  # (B, T, H): pool in fp32 whatever the model dtype
            pooled = pool(hidden, mask.to(hidden.dtype), self.head.pooling)  # (B, D)
            return pooled[:items].cpu().numpy()
        logits = self.encoder.classify(hidden).float()  # (B, L)
        if self.head.output == "probabilities":
            logits = activate(logits, multi_label=self.head.multi_label)
        return logits[:items].cpu().numpy()


def activate(logits: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Label probabilities (B, L) from logits (B, L): a sigmoid each, or a softmax over them."""
    return torch.sigmoid(logits) if multi_label else logits.softmax(-1)
