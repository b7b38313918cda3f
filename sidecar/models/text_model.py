"""BERT-family text encoders behind the model interface: `embed` and `classify`.

It joins a snapshot's tokenizer, a backend that runs the encoder (backend.py: torch, bert.py;
or an ONNX graph, onnx_model.py) and the sentence-transformers pre- and post-processing the
snapshot declares. Per-model work that is cheap on the device stays in `forward` (pooling in
fp32, the classifier's own activation); per-request choices (normalisation) and labels are
`finish`'s. `build` is the one recipe from snapshot files to a model, whatever the backend.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from sidecar.models.backend import Backend, Head, TorchBackend
from sidecar.models.bert import MODEL_TYPES, BertConfig, build_encoder
from sidecar.models.device import device_uuid, dtype_name
from sidecar.models.errors import InputTooLongError, ModelLoadError, WrongInputsError
from sidecar.models.graphs import cuda_capture
from sidecar.models.interface import (
    MAX_CHARS_PER_TOKEN,
    Classification,
    Classifications,
    Embeddings,
    Family,
    Inputs,
    LoadOptions,
    ModelCard,
    PadShape,
    Prepared,
    Result,
    TextInputs,
)
from sidecar.models.snapshot import (
    SentenceTransformerSpec,
    architectures,
    has_classification_head,
    labels,
    read_json,
    sentence_transformers_spec,
)
from sidecar.models.tokens import (
    ENCODE_RUN_CHARS,
    Batch,
    TextTokenizer,
    collate,
    cut_text,
    runs,
)

logger = logging.getLogger(__name__)

TASKS = ("embed", "classify")

Rows = npt.NDArray[np.float32]
# (config, head) -> the backend that runs the encoder and gives the head's rows.
MakeBackend = Callable[[BertConfig, Head], Backend]


class TextModel:
    """A tokenizer, a backend running the encoder, and the pre- and post-processing of one task.

    Items are token id lists; `forward` gives (B, D) pooled embeddings before normalisation,
    or (B, L) label probabilities.
    """

    def __init__(
        self,
        *,
        tokenizer: TextTokenizer,
        backend: Backend,
        task: str,
        architecture: str,
        max_input_tokens: int,
        labels: tuple[str, ...] | None,
        spec: SentenceTransformerSpec,
        embedding_dim: int | None,
        pad_id: int,
    ) -> None:
        self.task = task
        self.architecture = architecture
        self.max_input_tokens = max_input_tokens
        self.embedding_dim = embedding_dim if task == "embed" else None
        self.labels = labels
        self.normalizes = spec.normalizes
        self.device = backend.device
        self.dtype = backend.dtype
        self._tokenizer = tokenizer
        self.backend = backend
        self._spec = spec
        self._pad_id = pad_id
        if max_input_tokens <= tokenizer.num_specials:
            raise ModelLoadError(
                f"max_input_tokens {max_input_tokens} leaves no room beside the "
                f"{tokenizer.num_specials} special tokens"
            )

    @property
    def card(self) -> ModelCard:
        return ModelCard(
            task=self.task,
            architecture=self.architecture,
            device=str(self.device),
            dtype=dtype_name(self.dtype),
            device_uuid=device_uuid(self.device),
            max_input_tokens=self.max_input_tokens,
            embedding_dim=self.embedding_dim,
            labels=self.labels,
            pooling=self._spec.pooling if self.task == "embed" else None,
            snapshot_normalizes=self.normalizes,
            backend=self.backend.name,
        )

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens, neither padded nor truncated."""
        return self._tokenizer.encode(texts)

    def truncate(self, ids: Sequence[int], max_tokens: int) -> list[int]:
        """Cut `ids` to `max_tokens`, keeping the trailing special tokens, as HF truncation does."""
        return self._tokenizer.truncate(ids, max_tokens)

    def prepare(self, inputs: Inputs) -> Prepared[list[int]]:
        """Refuse or cut texts over the character cap (`MAX_CHARS_PER_TOKEN`), tokenize them a
        run at a time, then refuse or truncate inputs over `max_input_tokens`."""
        if not isinstance(inputs, TextInputs):
            raise WrongInputsError(f"this model serves '{self.task}': it takes texts, not pairs")
        limit = self.max_input_tokens
        max_chars = limit * MAX_CHARS_PER_TOKEN
        texts = list(inputs.texts)
        for index, text in enumerate(texts):
            if len(text) > max_chars:
                if not inputs.truncate:
                    raise InputTooLongError(
                        f"input {index} has {len(text)} characters, more than the {max_chars} "
                        f"taken for a limit of {limit} tokens; set truncate to true to cut it"
                    )
                texts[index] = cut_text(text, max_chars)
        ids: list[list[int]] = []
        for run in runs([len(text) for text in texts], ENCODE_RUN_CHARS):
            for index, seq in zip(run, self.tokenize(texts[run.start : run.stop]), strict=True):
                if len(seq) > limit:
                    if not inputs.truncate:
                        raise InputTooLongError(
                            f"input {index} has {len(seq)} tokens, more than the limit of "
                            f"{limit}; set truncate to true to cut it to the limit"
                        )
                    seq = self.truncate(seq, limit)
                ids.append(seq)
        return Prepared(ids, [len(seq) for seq in ids])

    def cache_key(self, ids: list[int]) -> bytes:
        """The token ids (after truncation): all the forward pass reads of an item."""
        return array("q", ids).tobytes()

    def collate(self, seqs: Sequence[Sequence[int]], shape: PadShape | None = None) -> Batch:
        """Right-pad token id sequences to the longest, or to the shape `shape` gives."""
        return collate(seqs, self._pad_id, self.device, shape=shape)

    def forward(self, batch: Batch) -> Rows:
        """(N, D) pooled embeddings before normalisation, or (N, L) label probabilities, of the
        batch's N items (filler rows dropped)."""
        return self.backend.run(batch)

    @property
    def steps(self) -> int:
        return self.backend.steps

    def forward_steps(self, batch: Batch) -> Generator[None, None, Rows]:
        """`forward` in `steps` steps (`interface.SteppedModel`)."""
        return (yield from self.backend.run_steps(batch))

    def is_oom(self, exc: BaseException) -> bool:
        return self.backend.is_oom(exc)

    def is_fatal(self, exc: BaseException) -> bool:
        return self.backend.is_fatal(exc)

    def release_memory(self) -> None:
        self.backend.release_memory()

    def finish(self, outputs: Sequence[npt.NDArray[np.float32]], inputs: Inputs) -> Result:
        """Embeddings, normalised when asked; or each input's best label and every score."""
        rows = np.stack(outputs)
        if self.task == "classify":
            return Classifications([_classification(row, self.labels or ()) for row in rows])
        if isinstance(inputs, TextInputs) and not inputs.normalize:
            return Embeddings(rows)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return Embeddings(rows / np.maximum(norms, 1e-12))

    def warmup(
        self, max_batch: int, max_tokens: int, shapes: Sequence[tuple[int, int]] | None = None
    ) -> list[tuple[int, float]]:
        """Run forward passes across shapes, never more than `max_tokens` padded tokens.

        Args:
            max_batch: the most items of a batch.
            max_tokens: the most padded tokens of a batch.
            shapes: exactly these (items, tokens) shapes (say every shape bucket), instead of a
                few from one short item to `max_batch` items of the longest input.

        Returns:
            (padded tokens, seconds) of each shape's second pass: the first also pays for
            allocation (and on CUDA, kernel selection), which later passes do not. With CUDA
            graphs captured (`shapes` given), of a pass after the capture: a replay.
        """
        top = min(self.max_input_tokens, max_tokens)
        given = shapes is not None
        if shapes is None:
            shapes = [
                (size, length)
                for length in sorted({min(t, top) for t in (8, 64, top)})
                for size in sorted({1, max(1, min(max_batch, max_tokens // length))})
            ]
        # Filler text needs room beside the special tokens, and no more than the input limit.
        least, most = self._tokenizer.num_specials + 1, self.max_input_tokens
        shapes = [(n, length) for n, length in shapes if least <= length <= most]
        timings: list[tuple[int, float]] = []
        runs: list[Sequence[Sequence[int]]] = []
        for size, length in shapes:
            ids, short = self._tokenizer.filler(length)
            # With company, one item is short so the padded-attention path warms up too.
            seqs = [ids] if size == 1 else [*([ids] * (size - 1)), short]
            self.forward(self.collate(seqs))
            timings.append((size * length, self._timed(seqs)))
            runs.append(seqs)
        logger.info("warmed up on %d shapes (batch, tokens): %s", len(shapes), shapes)
        if given and self.backend.capture(shapes):  # CUDA graphs of the bucket shapes, if asked
            # The passes as batches of these shapes will run them (replays): the cost's seed.
            timings = [
                (tokens, self._timed(run)) for (tokens, _), run in zip(timings, runs, strict=True)
            ]
        return timings

    def _timed(self, seqs: Sequence[Sequence[int]]) -> float:
        started = time.perf_counter()
        self.forward(self.collate(seqs))
        return time.perf_counter() - started


def _classification(probabilities: Rows, names: tuple[str, ...]) -> Classification:
    best = int(np.argmax(probabilities))
    return Classification(
        label=names[best],
        score=float(probabilities[best]),
        scores={label: float(p) for label, p in zip(names, probabilities, strict=True)},
    )


def detect(config: Mapping[str, Any], directory: Path) -> str:
    """Classify with a sequence-classification checkpoint, embed with any other."""
    return "classify" if has_classification_head(config) else "embed"


def load(directory: Path, weights: Mapping[str, torch.Tensor], options: LoadOptions) -> TextModel:
    """Build a ready-to-serve text model from a Hugging Face snapshot directory.

    Args:
        directory: holds config.json and tokenizer.json, and for sentence-transformers models
            modules.json, 1_Pooling/config.json and sentence_bert_config.json.
        weights: the checkpoint's tensors keyed by checkpoint name; cast and moved here.
        options: device, dtype, the task ("embed" or "classify"; None: `detect`), and a cap on
            input length at most the model's position limit.

    Raises:
        ModelLoadError: the files cannot serve the task, or the weights do not match.
    """

    def backend(config: BertConfig, head: Head) -> Backend:
        with_head = head.output != "pooled"
        encoder = build_encoder(
            config, weights, with_head=with_head, device=options.device, dtype=options.dtype
        )
        capture = cuda_capture(options.device, options.cuda_graphs)
        return TorchBackend(encoder, head, capture)

    return build(directory, options, backend)


def build(directory: Path, options: LoadOptions, make_backend: MakeBackend) -> TextModel:
    """A text model from a snapshot's files, its encoder run by the backend `make_backend`
    gives (the recipe of `load`, whatever runs the encoder).

    Raises:
        ModelLoadError: the files cannot serve the task, or the backend refuses them.
    """
    raw = read_json(directory, "config.json")
    config = BertConfig.from_dict(raw)
    names = architectures(raw)
    has_head = has_classification_head(raw)
    task = options.task or detect(raw, directory)
    if task == "classify" and not has_head:
        raise ModelLoadError(
            f"task 'classify' needs a sequence-classification checkpoint, but config.json "
            f"architectures are {names}"
        )
    spec = sentence_transformers_spec(directory) if task == "embed" else SentenceTransformerSpec()
    tokenizer = TextTokenizer(directory, lowercase=spec.lowercase)
    limit = config.max_positions
    max_input_tokens = options.max_input_tokens
    if max_input_tokens is not None and not 1 <= max_input_tokens <= limit:
        raise ModelLoadError(
            f"max_input_tokens {max_input_tokens} is outside the model's position limit "
            f"of {limit} tokens"
        )
    default_max = min(spec.max_seq_length or limit, limit)
    multi_label = raw.get("problem_type") == "multi_label_classification" or config.num_labels == 1
    head = (
        Head("probabilities", multi_label=multi_label)
        if task == "classify"
        else Head("pooled", pooling=spec.pooling)
    )
    backend = make_backend(config, head)
    model = TextModel(
        tokenizer=tokenizer,
        backend=backend,
        task=task,
        architecture=names[0] if names else f"{config.model_type} encoder",
        max_input_tokens=max_input_tokens or default_max,
        labels=labels(raw, config.num_labels) if task == "classify" else None,
        spec=spec,
        embedding_dim=config.hidden_size * len(spec.pooling),
        pad_id=config.pad_token_id,
    )
    logger.info(
        "loaded %s (%s) for %s on %s as %s (%s): max %d input tokens, %s",
        model.architecture,
        config.model_type,
        task,
        model.device,
        model.dtype,
        backend.name,
        model.max_input_tokens,
        f"labels {model.labels}" if task == "classify" else f"dimension {model.embedding_dim}",
    )
    return model


FAMILY = Family("BERT-family text encoder", MODEL_TYPES, TASKS, detect, load)
