"""Cross-encoders behind the model interface: `rerank` scores (query, document) pairs.

A cross-encoder is a BERT-family sequence classifier with one label that reads the query and a
document together (`[CLS] query [SEP] document [SEP]`, segment ids 0 then 1) and gives one
relevance logit. `finish` applies the snapshot's activation (sigmoid unless it says otherwise),
or none when the request asks for raw scores. The activation comes from an allow-list by name,
never from a dotted path imported out of a config file.
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
    Family,
    Inputs,
    LoadOptions,
    ModelCard,
    PadShape,
    PairInputs,
    Prepared,
    Result,
    Scores,
)
from sidecar.models.snapshot import (
    architectures,
    has_classification_head,
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

# The activations sentence-transformers writes for a CrossEncoder, by the names it writes.
ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.Identity": "identity",
}

Pair = tuple[list[int], list[int]]  # token ids and segment (type) ids of one pair
# (config, head) -> the backend that runs the encoder and gives the head's rows.
MakeBackend = Callable[[BertConfig, Head], Backend]


class CrossEncoder:
    """A tokenizer of pairs, a backend running an encoder with a one-logit head, and the
    activation of its scores."""

    def __init__(
        self,
        *,
        tokenizer: TextTokenizer,
        backend: Backend,
        architecture: str,
        max_input_tokens: int,
        activation: str,
        pad_id: int,
    ) -> None:
        self.architecture = architecture
        self.max_input_tokens = max_input_tokens
        self.activation = activation
        self.device = backend.device
        self.dtype = backend.dtype
        self._tokenizer = tokenizer
        self.backend = backend
        self._pad_id = pad_id
        if max_input_tokens <= tokenizer.num_pair_specials + 1:
            raise ModelLoadError(
                f"max_input_tokens {max_input_tokens} leaves no room beside the "
                f"{tokenizer.num_pair_specials} special tokens of a pair"
            )

    @property
    def card(self) -> ModelCard:
        return ModelCard(
            task="rerank",
            architecture=self.architecture,
            device=str(self.device),
            dtype=dtype_name(self.dtype),
            device_uuid=device_uuid(self.device),
            max_input_tokens=self.max_input_tokens,
            backend=self.backend.name,
        )

    def prepare(self, inputs: Inputs) -> Prepared[Pair]:
        """Refuse pairs over the character cap (`MAX_CHARS_PER_TOKEN`) or cut each side to it,
        tokenize them a run at a time, then refuse or truncate pairs over the token limit."""
        if not isinstance(inputs, PairInputs):
            raise WrongInputsError("this model serves 'rerank': it takes a query and documents")
        limit = self.max_input_tokens
        max_chars = limit * MAX_CHARS_PER_TOKEN
        query, documents = inputs.query, list(inputs.documents)
        if inputs.truncate:  # longest-first truncation keeps at most `limit` tokens of a side
            query = cut_text(query, max_chars)
            documents = [cut_text(document, max_chars) for document in documents]
        else:
            for index, document in enumerate(documents):
                if len(query) + len(document) > max_chars:
                    raise InputTooLongError(
                        f"document {index} with the query has {len(query) + len(document)} "
                        f"characters, more than the {max_chars} taken for a limit of {limit} "
                        "tokens; set truncate to true to cut it"
                    )
        pairs: list[Pair] = []
        for run in runs([len(query) + len(document) for document in documents], ENCODE_RUN_CHARS):
            chunk = documents[run.start : run.stop]
            encoded = self._tokenizer.encode_pairs(query, chunk)
            long = [i for i, (ids, _) in enumerate(encoded) if len(ids) > limit]
            if long and not inputs.truncate:
                raise InputTooLongError(
                    f"document {run.start + long[0]} with the query has "
                    f"{len(encoded[long[0]][0])} tokens, more than the limit of {limit}; set "
                    "truncate to true to cut it to the limit"
                )
            if long:
                cut = self._tokenizer.encode_pairs(query, [chunk[i] for i in long], truncate=True)
                for i, pair in zip(long, cut, strict=True):
                    encoded[i] = pair
            pairs.extend(encoded)
        return Prepared(pairs, [len(ids) for ids, _ in pairs])

    def cache_key(self, pair: Pair) -> bytes:
        """The pair's length, token ids and segment ids: all the forward pass reads of it."""
        ids, types = pair
        return array("q", [len(ids), *ids, *types]).tobytes()

    def collate(self, pairs: Sequence[Pair], shape: PadShape | None = None) -> Batch:
        """Right-pad the pairs' ids and segment ids to the longest, or to the shape `shape`
        gives."""
        ids, types = [ids for ids, _ in pairs], [types for _, types in pairs]
        return collate(ids, self._pad_id, self.device, types, shape=shape)

    def forward(self, batch: Batch) -> npt.NDArray[np.float32]:
        """(N,) relevance logits in fp32 of the batch's N items (filler rows dropped)."""
        return self.backend.run(batch)[:, 0]  # (N, 1) -> (N,)

    @property
    def steps(self) -> int:
        return self.backend.steps

    def forward_steps(self, batch: Batch) -> Generator[None, None, npt.NDArray[np.float32]]:
        """`forward` in `steps` steps (`interface.SteppedModel`)."""
        rows = yield from self.backend.run_steps(batch)
        return rows[:, 0]

    def is_oom(self, exc: BaseException) -> bool:
        return self.backend.is_oom(exc)

    def is_fatal(self, exc: BaseException) -> bool:
        return self.backend.is_fatal(exc)

    def release_memory(self) -> None:
        self.backend.release_memory()

    def finish(self, outputs: Sequence[np.float32], inputs: Inputs) -> Result:
        """Scores in document order: the activation of the logits, or the logits when asked."""
        logits = np.asarray(outputs, dtype=np.float32)
        if self.activation == "identity" or (isinstance(inputs, PairInputs) and inputs.raw_scores):
            return Scores(logits)
        return Scores((1.0 / (1.0 + np.exp(-logits))).astype(np.float32))

    def warmup(
        self, max_batch: int, max_tokens: int, shapes: Sequence[tuple[int, int]] | None = None
    ) -> list[tuple[int, float]]:
        """Passes of pairs across shapes, never over `max_tokens` padded tokens.

        Args:
            max_batch: the most pairs of a batch.
            max_tokens: the most padded tokens of a batch.
            shapes: exactly these (pairs, tokens) shapes (say every shape bucket), instead of
                a few from one short pair to `max_batch` pairs of the longest input.

        Returns:
            (padded tokens, seconds) of each shape's second pass (the first also allocates);
            with CUDA graphs captured (`shapes` given), of a pass after the capture (a replay).
        """
        top = min(self.max_input_tokens, max_tokens)
        given = shapes is not None
        if shapes is None:
            shapes = [
                (size, length)
                for length in sorted({min(t, top) for t in (16, 64, top)})
                for size in sorted({1, max(1, min(max_batch, max_tokens // length))})
            ]
        # A pair needs its special tokens and a token of each text.
        least = self._tokenizer.num_pair_specials + 2
        most = self.max_input_tokens
        shapes = [(size, length) for size, length in shapes if least <= length <= most]
        timings: list[tuple[int, float]] = []
        runs: list[Sequence[Pair]] = []
        for size, length in shapes:
            document = " ".join(["warmup"] * length)
            pairs = self._tokenizer.encode_pairs("warmup", [document] * size, truncate=True)
            pairs = [_cut(pair, length) for pair in pairs]
            self.forward(self.collate(pairs))
            timings.append((size * length, self._timed(pairs)))
            runs.append(pairs)
        logger.info("warmed up on %d shapes (batch, tokens): %s", len(shapes), shapes)
        if given and self.backend.capture(shapes):  # CUDA graphs of the bucket shapes, if asked
            # The passes as batches of these shapes will run them (replays): the cost's seed.
            timings = [
                (tokens, self._timed(run)) for (tokens, _), run in zip(timings, runs, strict=True)
            ]
        return timings

    def _timed(self, pairs: Sequence[Pair]) -> float:
        started = time.perf_counter()
        self.forward(self.collate(pairs))
        return time.perf_counter() - started


def _cut(pair: Pair, length: int) -> Pair:
    """A pair cut to `length` tokens, keeping its closing special token."""
    ids, types = pair
    if len(ids) <= length:
        return pair
    return [*ids[: length - 1], ids[-1]], [*types[: length - 1], types[-1]]


def _activation(config: Mapping[str, Any], directory: Path) -> str:
    """The snapshot's activation by allow-listed name (sentence-transformers 6, 4-5, <4)."""
    named: Any = None
    if (directory / "config_sentence_transformers.json").is_file():
        named = read_json(directory, "config_sentence_transformers.json").get("activation_fn")
    section = config.get("sentence_transformers")
    if named is None and isinstance(section, dict):
        named = section.get("activation_fn")
    if named is None:
        named = config.get("sbert_ce_default_activation_function")
    if named is None:
        return "sigmoid"
    if named not in ACTIVATIONS:
        raise ModelLoadError(
            f"cross-encoder activation {str(named)[:100]!r} is not supported "
            f"(supported: {', '.join(ACTIVATIONS)})"
        )
    return ACTIVATIONS[named]


def detect(config: Mapping[str, Any], directory: Path) -> str | None:
    """Rerank with a one-label classifier that sentence-transformers saved as a CrossEncoder."""
    if not has_classification_head(config):
        return None
    marked = "sentence_transformers" in config or "sbert_ce_default_activation_function" in config
    if (directory / "config_sentence_transformers.json").is_file():
        st_config = read_json(directory, "config_sentence_transformers.json")
        marked = marked or st_config.get("model_type") == "CrossEncoder"
    if not marked or BertConfig.from_dict(config).num_labels != 1:
        return None
    return "rerank"


def load(
    directory: Path, weights: Mapping[str, torch.Tensor], options: LoadOptions
) -> CrossEncoder:
    """Build a cross-encoder from a one-label sequence-classification snapshot.

    Raises:
        ModelLoadError: not a one-label classifier, an activation off the allow-list, a limit
            out of range, or weights that do not match.
    """

    def backend(config: BertConfig, head: Head) -> Backend:
        encoder = build_encoder(
            config, weights, with_head=True, device=options.device, dtype=options.dtype
        )
        capture = cuda_capture(options.device, options.cuda_graphs)
        return TorchBackend(encoder, head, capture)

    return build(directory, options, backend)


def build(directory: Path, options: LoadOptions, make_backend: MakeBackend) -> CrossEncoder:
    """A cross-encoder from a snapshot's files, its encoder run by the backend `make_backend`
    gives (the recipe of `load`, whatever runs the encoder).

    Raises:
        ModelLoadError: as `load`, or the backend refuses the files.
    """
    raw = read_json(directory, "config.json")
    config = BertConfig.from_dict(raw)
    names = architectures(raw)
    if not has_classification_head(raw) or config.num_labels != 1:
        raise ModelLoadError(
            "task 'rerank' needs a sequence-classification checkpoint with one label, but "
            f"config.json architectures are {names} with {config.num_labels} labels"
        )
    spec = sentence_transformers_spec(directory)
    limit = config.max_positions
    max_input_tokens = options.max_input_tokens or min(spec.max_seq_length or limit, limit)
    if not 1 <= max_input_tokens <= limit:
        raise ModelLoadError(
            f"max_input_tokens {max_input_tokens} is outside the model's position limit "
            f"of {limit} tokens"
        )
    backend = make_backend(config, Head("logits"))
    model = CrossEncoder(
        tokenizer=TextTokenizer(
            directory, lowercase=spec.lowercase, pair_max_tokens=max_input_tokens
        ),
        backend=backend,
        architecture=names[0],
        max_input_tokens=max_input_tokens,
        activation=_activation(raw, directory),
        pad_id=config.pad_token_id,
    )
    logger.info(
        "loaded %s (%s) for rerank on %s as %s (%s): max %d tokens per pair, %s activation",
        model.architecture, config.model_type, model.device, model.dtype, backend.name,
        max_input_tokens, model.activation,
    )  # fmt: skip
    return model


FAMILY = Family("cross-encoder", MODEL_TYPES, ("rerank",), detect, load)
