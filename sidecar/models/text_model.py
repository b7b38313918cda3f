"""A text model the serving engine drives: tokenize, truncate, collate, forward, warm up.

It joins a Hugging Face snapshot's tokenizer, an encoder family (today: bert.py) and the
sentence-transformers pre/post-processing the snapshot declares, for one task:
`embed` (pooled vectors, before normalisation) or `classify` (label probabilities).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import Tokenizer

from sidecar.models.bert import BertConfig, BertEncoder, build_encoder
from sidecar.models.errors import ModelLoadError
from sidecar.models.pooling import pool, pooling_modes

logger = logging.getLogger(__name__)

TASKS = ("embed", "classify")
_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class Batch:
    """Model inputs for one forward pass; on CUDA these are pinned CPU tensors."""

    input_ids: torch.Tensor  # (B, T) int64, right-padded with the pad id
    attention_mask: torch.Tensor  # (B, T) int64, 1 on real tokens
    token_type_ids: torch.Tensor  # (B, T) int64


@dataclass(frozen=True)
class SentenceTransformerSpec:
    """What a snapshot's sentence-transformers files ask of the embedding pipeline."""

    pooling: tuple[str, ...] = ("mean",)
    normalizes: bool = False
    max_seq_length: int | None = None
    lowercase: bool = False


class TextModel:
    """A tokenizer, an encoder and the pre/post-processing for one task."""

    def __init__(
        self,
        *,
        tokenizer: Tokenizer,
        encoder: BertEncoder,
        task: str,
        architecture: str,
        max_input_tokens: int,
        labels: tuple[str, ...] | None,
        spec: SentenceTransformerSpec,
        multi_label: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.task = task
        self.architecture = architecture
        self.max_input_tokens = max_input_tokens
        self.embedding_dim = (
            encoder.config.hidden_size * len(spec.pooling) if task == "embed" else None
        )
        self.labels = labels
        self.normalizes = spec.normalizes
        self.device = device
        self.dtype = dtype
        self._tokenizer = tokenizer
        self._encoder = encoder
        self._spec = spec
        self._multi_label = multi_label
        self._pad_id = encoder.config.pad_token_id
        self._max_positions = encoder.config.max_positions
        specials = tokenizer.encode("a").special_tokens_mask
        self._num_specials = sum(specials)
        # Special tokens after the text ([SEP], </s>) survive truncation.
        self._num_suffix = len(specials) - len(list(itertools.dropwhile(bool, reversed(specials))))
        if max_input_tokens <= self._num_specials:
            raise ModelLoadError(
                f"max_input_tokens {max_input_tokens} leaves no room beside the "
                f"{self._num_specials} special tokens"
            )

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens, neither padded nor truncated."""
        if self._spec.lowercase:
            texts = [text.lower() for text in texts]
        return [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))]

    def truncate(self, ids: Sequence[int], max_tokens: int) -> list[int]:
        """Cut `ids` to `max_tokens`, keeping the trailing special tokens, as HF truncation does."""
        if max_tokens <= self._num_specials:
            raise ValueError(f"max_tokens {max_tokens} leaves no room beside the special tokens")
        if len(ids) <= max_tokens:
            return list(ids)
        keep = max_tokens - self._num_suffix
        return [*ids[:keep], *ids[len(ids) - self._num_suffix :]]

    def collate(self, seqs: Sequence[Sequence[int]]) -> Batch:
        """Right-pad token id sequences to the longest one."""
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        if lengths.size == 0 or lengths.min() == 0:
            raise ValueError("collate needs at least one sequence and no empty ones")
        B, T = len(seqs), int(lengths.max())
        real = np.arange(T)[None, :] < lengths[:, None]  # (B, T)
        input_ids = np.full((B, T), self._pad_id, dtype=np.int64)
        # Row-major boolean assignment fills each row's real positions from the flat ids, in order.
        input_ids[real] = np.fromiter(
            itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum())
        )
        tensors = [
            torch.from_numpy(input_ids),
            torch.from_numpy(real.astype(np.int64)),
            torch.zeros((B, T), dtype=torch.int64),
        ]
        if self.device.type == "cuda":
            tensors = [t.pin_memory() for t in tensors]
        return Batch(input_ids=tensors[0], attention_mask=tensors[1], token_type_ids=tensors[2])

    def forward(self, batch: Batch) -> npt.NDArray[np.float32]:
        """(B, D) pooled embeddings before normalisation, or (B, L) label probabilities."""
        num_tokens = batch.input_ids.shape[1]
        if num_tokens > self._max_positions:
            raise ValueError(
                f"batch of {num_tokens} tokens exceeds the model's {self._max_positions}"
            )
        # Checked on the host copy, before the transfer: no device sync.
        padded = not bool(batch.attention_mask.all())
        with torch.inference_mode():
            input_ids = batch.input_ids.to(self.device, non_blocking=True)
            token_type_ids = batch.token_type_ids.to(self.device, non_blocking=True)
            mask = batch.attention_mask.to(self.device, non_blocking=True).bool()  # (B, T)
            hidden = self._encoder(input_ids, token_type_ids, mask if padded else None)
            if self.task == "classify":
                logits = self._encoder.classify(hidden).float()  # (B, L)
                probs = torch.sigmoid(logits) if self._multi_label else logits.softmax(-1)
                return probs.cpu().numpy()
            hidden = hidden.float()  # (B, T, H): pool in fp32 whatever the model dtype
            pooled = pool(hidden, mask.to(hidden.dtype), self._spec.pooling)  # (B, D)
            return pooled.cpu().numpy()

    def warmup(self, max_batch: int, max_tokens: int) -> None:
        """Run a few forward passes across shapes, never more than `max_tokens` padded tokens."""
        top = min(self.max_input_tokens, max_tokens)
        lengths = sorted({min(t, top) for t in (8, 64, top)} - set(range(self._num_specials + 1)))
        shapes = [
            (size, length)
            for length in lengths
            for size in sorted({1, max(1, min(max_batch, max_tokens // length))})
        ]
        for size, length in shapes:
            ids = self.truncate(self.tokenize([" ".join(["warmup"] * length)])[0], length)
            # With company, one item is short so the padded-attention path warms up too.
            short = [
                *ids[: self._num_specials - self._num_suffix + 1],
                *ids[len(ids) - self._num_suffix :],
            ]
            seqs = [ids] if size == 1 else [*([ids] * (size - 1)), short]
            self.forward(self.collate(seqs))
        logger.info("warmed up on %d shapes (batch, tokens): %s", len(shapes), shapes)


def _read_json(directory: Path, name: str, kind: type = dict) -> Any:
    """A JSON file of the snapshot, which must hold a `kind` (an object unless told)."""
    try:
        value = json.loads((directory / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {name} from the model directory: {exc}") from None
    if not isinstance(value, kind):
        raise ModelLoadError(f"{name} must hold a JSON {'list' if kind is list else 'object'}")
    return value


def _read_sentence_transformers(directory: Path) -> SentenceTransformerSpec:
    """Pooling, normalisation and length limits from modules.json and its siblings."""
    modules: list[Any] = []
    if (directory / "modules.json").is_file():
        modules = _read_json(directory, "modules.json", list)
        if not all(isinstance(m, dict) for m in modules):
            raise ModelLoadError("modules.json must hold a list of objects")
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules}
    unknown = sorted(set(kinds) - set(_KNOWN_MODULES))
    if unknown:
        raise ModelLoadError(
            f"modules.json sentence-transformers modules {unknown} are not supported"
        )
    if str(kinds.get("Transformer", {}).get("path", "")) not in ("", "."):
        raise ModelLoadError("modules.json: a Transformer module outside the root is not supported")
    pooling_path = str(kinds.get("Pooling", {}).get("path", "1_Pooling"))
    pooling: tuple[str, ...] = ("mean",)
    if (directory / pooling_path / "config.json").is_file():
        pooling = pooling_modes(_read_json(directory, f"{pooling_path}/config.json"))
    max_seq_length, lowercase = None, False
    if (directory / "sentence_bert_config.json").is_file():
        raw = _read_json(directory, "sentence_bert_config.json")
        max_seq_length = raw.get("max_seq_length")
        if max_seq_length is not None and (
            not isinstance(max_seq_length, int) or max_seq_length < 1
        ):
            raise ModelLoadError(f"sentence_bert_config.json max_seq_length {max_seq_length!r}")
        lowercase = raw.get("do_lower_case") is True
    return SentenceTransformerSpec(pooling, "Normalize" in kinds, max_seq_length, lowercase)


def _labels(raw: Mapping[str, Any], num_labels: int) -> tuple[str, ...]:
    id2label = raw.get("id2label") or {}
    try:
        by_index = {int(index): str(label) for index, label in id2label.items()}
    except (AttributeError, ValueError):
        raise ModelLoadError("config.json id2label must map label indices to names") from None
    return tuple(by_index.get(i, f"LABEL_{i}") for i in range(num_labels))


def load_text_model(
    directory: Path,
    weights: Mapping[str, torch.Tensor],
    *,
    device: torch.device,
    dtype: torch.dtype,
    task: str | None = None,
    max_input_tokens: int | None = None,
) -> TextModel:
    """Build a ready-to-serve text model from a Hugging Face snapshot directory.

    Args:
        directory: holds config.json and tokenizer.json, and for sentence-transformers models
            modules.json, 1_Pooling/config.json and sentence_bert_config.json.
        weights: the checkpoint's tensors keyed by checkpoint name; cast and moved here.
        device: where the model runs.
        dtype: floating dtype of the parameters.
        task: "embed" or "classify"; None detects it from config.json architectures.
        max_input_tokens: a cap on input length, at most the model's position limit.

    Returns:
        The model in eval mode.

    Raises:
        ModelLoadError: the files cannot serve the task, or the weights do not match.
    """
    raw = _read_json(directory, "config.json")
    config = BertConfig.from_dict(raw)
    architectures = [str(a) for a in raw.get("architectures") or []]
    has_head = any("ForSequenceClassification" in a for a in architectures)
    task = task or ("classify" if has_head else "embed")
    if task not in TASKS:
        raise ModelLoadError(f"task {task!r} is not supported (supported: {', '.join(TASKS)})")
    if task == "classify" and not has_head:
        raise ModelLoadError(
            f"task 'classify' needs a sequence-classification checkpoint, but config.json "
            f"architectures are {architectures}"
        )
    if not (directory / "tokenizer.json").is_file():
        raise ModelLoadError("the model directory has no tokenizer.json (a fast tokenizer)")
    try:
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as exc:  # the tokenizers library raises bare Exception
        raise ModelLoadError(f"cannot load tokenizer.json: {exc}") from None
    # Snapshots may pin padding and truncation in tokenizer.json; we pad and truncate ourselves.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    spec = _read_sentence_transformers(directory) if task == "embed" else SentenceTransformerSpec()
    limit = config.max_positions
    if max_input_tokens is not None and not 1 <= max_input_tokens <= limit:
        raise ModelLoadError(
            f"max_input_tokens {max_input_tokens} is outside the model's position limit "
            f"of {limit} tokens"
        )
    default_max = min(spec.max_seq_length or limit, limit)
    encoder = build_encoder(
        config, weights, with_head=task == "classify", device=device, dtype=dtype
    )
    model = TextModel(
        tokenizer=tokenizer,
        encoder=encoder,
        task=task,
        architecture=architectures[0] if architectures else f"{config.model_type} encoder",
        max_input_tokens=max_input_tokens or default_max,
        labels=_labels(raw, config.num_labels) if task == "classify" else None,
        spec=spec,
        multi_label=raw.get("problem_type") == "multi_label_classification"
        or config.num_labels == 1,
        device=device,
        dtype=dtype,
    )
    logger.info(
        "loaded %s (%s) for %s on %s as %s: max %d input tokens, %s",
        model.architecture,
        config.model_type,
        task,
        device,
        dtype,
        model.max_input_tokens,
        f"labels {model.labels}" if task == "classify" else f"dimension {model.embedding_dim}",
    )
    return model
