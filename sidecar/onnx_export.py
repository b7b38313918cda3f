"""`sidecar export onnx MODEL OUT`: a torch family snapshot as a directory the onnx backend serves.

    snapshot (safetensors) -> the torch model the sidecar serves (families.load_model, CPU, fp32)
      -> its encoder and head as one graph, pooling or activation inside (torch.onnx.export)
      -> optionally ONNX Runtime's transformer optimizer, and fp16 for CUDA
      -> beside it the snapshot's tokenizer, config and sentence-transformers files
      -> parity: the written directory, loaded as the server loads it, against the torch model
         on sample texts (cosine for embeddings, largest difference for scores)
      -> renamed into OUT only once parity holds

The graph takes `input_ids`, `attention_mask` and `token_type_ids` as the server collates them
(int32 ids, a bool mask) with free batch and token axes, and gives what the model's `forward`
gives: `sentence_embedding` (pooled, before normalisation; metadata `sidecar.pooling` names the
pooling), `probabilities` (classify) or `logits` (rerank). Pooling inside the graph saves a copy
of the token states out of ONNX Runtime and a pass over them per batch.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

import loaders
from sidecar import __version__
from sidecar.models import (
    Classifications,
    Embeddings,
    LoadOptions,
    PairInputs,
    Scores,
    TextInputs,
    run_inline,
)
from sidecar.models.backend import TorchBackend, activate
from sidecar.models.families import load_model
from sidecar.models.onnx_model import GRAPH_FILE
from sidecar.models.pooling import pool
from sidecar.models.tokens import Batch

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = {
    "pooled": "sentence_embedding",
    "probabilities": "probabilities",
    "logits": "logits",
}
OPSET = 17
# What parity must hold to, in fp32 and in fp16: the least cosine of embeddings, and the largest
# difference of probabilities or logits (relative to 1 + |logit|).
MIN_COSINE = {torch.float32: 0.9999, torch.float16: 0.999}
MAX_DIFFERENCE = {torch.float32: 1e-3, torch.float16: 2e-2}
# Snapshot files copied beside the graph: configuration, tokenizer and sentence-transformers
# modules; never weights.
_COPIED_SUFFIXES = (".json", ".txt", ".model")
_NOT_COPIED = ("model.safetensors.index.json",)


class ExportError(Exception):
    """The export failed or its parity check did not hold; the message says which."""


@dataclass(frozen=True)
class ExportReport:
    """What was written and how close it came to the torch model."""

    out: Path
    task: str
    num_samples: int
    min_cosine: float | None  # embed
    max_difference: float | None  # classify, rerank
    graph_bytes: int
    seconds: float


class _Encoder(nn.Module):
    """The torch backend's forward pass as one module of plain tensors, for the exporter."""

    def __init__(self, backend: TorchBackend) -> None:
        super().__init__()
        self.encoder = backend.encoder
        self.head = backend.head

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.encoder(input_ids, token_type_ids, attention_mask)  # (B, T, H)
        if self.head.output == "pooled":
            hidden = hidden.float()
            return pool(hidden, attention_mask.to(hidden.dtype), self.head.pooling)  # (B, D)
        logits = self.encoder.classify(hidden).float()  # (B, L)
        if self.head.output == "probabilities":
            return activate(logits, multi_label=self.head.multi_label)
        return logits


def export_onnx(
    spec: str,
    out: Path,
    *,
    task: str | None = None,
    optimize: bool = False,
    fp16: bool = False,
    samples: Sequence[str] | None = None,
    num_samples: int = 200,
) -> ExportReport:
    """Export the snapshot `spec` (as SIDECAR_MODEL takes it) to the directory `out`.

    Args:
        spec: a local directory or `hf://org/name[@revision]` in the Hugging Face cache.
        out: where to write; must not exist yet (its parent must).
        task: the task to export for (None: detected as the server detects it).
        optimize: run ONNX Runtime's transformer optimizer on the graph.
        fp16: convert the graph to fp16 (for CUDA; inputs and outputs keep their types).
        samples: texts for the parity check (None: `num_samples` generated from the vocabulary).
        num_samples: how many texts to generate when none are given.

    Raises:
        ExportError: the source cannot be exported, or parity does not hold.
    """
    started = time.perf_counter()
    if out.exists():
        raise ExportError(f"{out} exists: give a new directory")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent} is not a directory")
    try:
        source = loaders.resolve_source(spec, offline=True)
        weights, _ = loaders.load_weights(source.weight_files)
        options = LoadOptions(torch.device("cpu"), torch.float32, task)
        model = load_model(source.directory, weights, options)
    except Exception as exc:  # loader and model errors alike: the message says what
        raise ExportError(f"cannot load {spec}: {exc}") from exc
    backend = getattr(model, "backend", None)  # the text recipes' (TextModel, CrossEncoder)
    if not isinstance(backend, TorchBackend):
        raise ExportError(f"{spec} is not served by a torch family")
    task = model.card.task
    limit = model.card.max_input_tokens
    texts = list(samples) if samples else sample_texts(source.directory, limit, num_samples)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _write_graph(backend, model, staging / GRAPH_FILE, source.name, task)
        if optimize or fp16:
            _optimize(staging / GRAPH_FILE, backend, optimize=optimize, fp16=fp16)
        _copy_snapshot_files(source.directory, staging)
        min_cosine, max_difference = _parity(model, staging, texts, task, fp16=fp16)
        graph_bytes = sum(p.stat().st_size for p in staging.iterdir() if p.is_file())
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportReport(
        out,
        task,
        len(texts),
        min_cosine,
        max_difference,
        graph_bytes,
        time.perf_counter() - started,
    )


def sample_texts(directory: Path, max_tokens: int, count: int, seed: int = 0) -> list[str]:
    """`count` texts of words from the snapshot tokenizer's vocabulary, from one word to past
    the model's input limit (truncated), the same for a seed."""
    vocabulary = Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab()
    words = sorted(
        {w.lstrip("\u0120\u2581") for w in vocabulary if not w.startswith("##")}
        - {""}  # BPE and SentencePiece mark a word's start; WordPiece its continuations
    )
    words = [w for w in words if w.isascii() and w.isalpha() and len(w) > 1] or ["sample"]
    rng = random.Random(seed)
    lengths = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, max_tokens, max_tokens + 50]
    return [" ".join(rng.choice(words) for _ in range(rng.choice(lengths))) for _ in range(count)]


def _example(model: Any, task: str) -> Batch:
    """A padded batch of a few short inputs: the exporter traces the masked path, axes free."""
    texts = ["a short input", "a somewhat longer input than the one before", "x"]
    inputs = PairInputs("a query", texts) if task == "rerank" else TextInputs(texts)
    return model.collate(model.prepare(inputs).items)  # type: ignore[no-any-return]


def _write_graph(backend: TorchBackend, model: Any, path: Path, name: str, task: str) -> None:
    import onnx

    batch = _example(model, task)
    wrapper = _Encoder(backend).eval()
    output = OUTPUT_NAMES[backend.head.output]
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUT_NAMES} | {output: {0: "batch"}}
    arguments = (batch.input_ids, batch.attention_mask, batch.token_type_ids)
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter: deprecated, but 5x quicker than the torch.export one here
        # and its graph ran as fast; parity is checked below either way.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            arguments,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    metadata = {
        "sidecar.task": task,
        "sidecar.architecture": model.card.architecture,
        "sidecar.source": name,
        "sidecar.exporter": f"sidecar {__version__}, torch {torch.__version__}",
    }
    if backend.head.output == "pooled":
        metadata["sidecar.pooling"] = ",".join(backend.head.pooling)
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def _optimize(path: Path, backend: TorchBackend, *, optimize: bool, fp16: bool) -> None:
    """ONNX Runtime's transformer optimizer (fusions for BERT-family encoders), and/or fp16."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = backend.encoder.config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(
            str(path),
            model_type="bert",
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            opt_level=1 if optimize else 0,
            only_onnxruntime=False,
        )
        if not optimize:
            optimized.optimizer = None
        if fp16:
            optimized.convert_float_to_float16(keep_io_types=True)
    logger.info("optimizer fusions: %s", optimized.get_fused_operator_statistics())
    optimized.save_model_to_file(str(path))


def _copy_snapshot_files(source: Path, out: Path) -> None:
    """Configuration, tokenizer and sentence-transformers module files; never weights."""
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix in _COPIED_SUFFIXES and path.name not in _NOT_COPIED:
            shutil.copyfile(path, out / path.name)
        elif path.is_dir() and path.name[:1].isdigit():  # 1_Pooling/, 2_Normalize/
            (out / path.name).mkdir()
            for inner in sorted(path.glob("*.json")):
                shutil.copyfile(inner, out / path.name / inner.name)


def _parity(
    model: Any, directory: Path, texts: Sequence[str], task: str, *, fp16: bool
) -> tuple[float | None, float | None]:
    """The written directory, loaded as the server loads it, against the torch model."""
    dtype = torch.float16 if fp16 else torch.float32
    try:
        options = LoadOptions(torch.device("cpu"), None, task, backend="onnx")
        exported = load_model(directory, {}, options)
    except Exception as exc:
        raise ExportError(f"the written graph does not load: {exc}") from exc
    if task == "rerank":
        inputs: Any = PairInputs(texts[0], texts[1:], truncate=True)
    else:
        inputs = TextInputs(texts, truncate=True, normalize=True)
    ours, theirs = run_inline(exported, inputs), run_inline(model, inputs)
    if isinstance(ours, Embeddings) and isinstance(theirs, Embeddings):
        cosine = float((ours.vectors * theirs.vectors).sum(axis=1).min())
        if cosine < MIN_COSINE[dtype]:
            raise ExportError(f"parity: least cosine {cosine:.6f} < {MIN_COSINE[dtype]}")
        return cosine, None
    if isinstance(ours, Classifications) and isinstance(theirs, Classifications):
        a = np.array([[c.scores[k] for k in sorted(c.scores)] for c in ours.items])
        b = np.array([[c.scores[k] for k in sorted(c.scores)] for c in theirs.items])
        difference = float(np.abs(a - b).max())
    elif isinstance(ours, Scores) and isinstance(theirs, Scores):
        difference = float(
            (np.abs(ours.values - theirs.values) / (1 + np.abs(theirs.values))).max()
        )
    else:
        raise ExportError(f"parity: results of different kinds for task {task}")
    if difference > MAX_DIFFERENCE[dtype]:
        raise ExportError(f"parity: largest difference {difference:.6f} > {MAX_DIFFERENCE[dtype]}")
    return None, difference
