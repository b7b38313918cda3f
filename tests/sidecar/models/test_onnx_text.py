"""Text models on the ONNX backend: `sidecar export onnx` copies against the torch families they
came from, and graphs written by other exporters (token states, logits)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sidecar.models import (
    Classifications,
    Embeddings,
    LoadOptions,
    ModelLoadError,
    PairInputs,
    Scores,
    TextInputs,
    run_inline,
)
from sidecar.models.families import load_model
from sidecar.models.text_model import TextModel
from tests.sidecar.models.conftest import Loader
from tests.sidecar.models.sentences import varied_sentences

CPU = torch.device("cpu")


def load_onnx(directory: Path, **options: Any) -> Any:
    return load_model(directory, {}, LoadOptions(CPU, None, backend="onnx", **options))


def test_the_exported_demo_model_matches_the_torch_path(
    demo_onnx_dir: Path, demo_model: TextModel
) -> None:
    model = load_onnx(demo_onnx_dir)
    card = model.card
    assert (card.backend, card.task, card.embedding_dim, card.max_input_tokens) == (
        "onnxruntime", "embed", 384, 256
    )  # fmt: skip
    assert demo_model.card.backend == "torch"
    texts = varied_sentences(200)
    inputs = TextInputs(texts, truncate=True)
    ours, theirs = run_inline(model, inputs), run_inline(demo_model, inputs)
    assert isinstance(ours, Embeddings) and isinstance(theirs, Embeddings)
    cosines = (ours.vectors * theirs.vectors).sum(axis=1)
    worst = int(cosines.argmin())
    assert cosines.min() >= 0.9999, f"text {worst} ({texts[worst][:60]!r}): {cosines[worst]}"
    raw = run_inline(model, TextInputs(texts[:20], truncate=True, normalize=False))
    assert isinstance(raw, Embeddings)
    assert abs(float(np.linalg.norm(raw.vectors[5])) - 1.0) > 1e-3  # pooled, not normalised


def test_classify_and_rerank_copies_match_torch(
    tiny_classify_dir: Path,
    tiny_classify_onnx_dir: Path,
    tiny_rerank_dir: Path,
    tiny_rerank_onnx_dir: Path,
    load: Loader,
) -> None:
    texts = varied_sentences(40, seed=4)
    ours = run_inline(load_onnx(tiny_classify_onnx_dir), TextInputs(texts, truncate=True))
    theirs = run_inline(load(tiny_classify_dir), TextInputs(texts, truncate=True))
    assert isinstance(ours, Classifications) and isinstance(theirs, Classifications)
    for a, b in zip(ours.items, theirs.items, strict=True):
        assert a.label == b.label
        assert max(abs(a.scores[k] - b.scores[k]) for k in a.scores) <= 1e-5
    pairs = PairInputs(texts[0], texts[1:], truncate=True)
    for raw_scores in (False, True):
        asked = PairInputs(pairs.query, pairs.documents, truncate=True, raw_scores=raw_scores)
        got = run_inline(load_onnx(tiny_rerank_onnx_dir), asked)
        want = run_inline(load(tiny_rerank_dir), asked)
        assert isinstance(got, Scores) and isinstance(want, Scores)
        np.testing.assert_allclose(got.values, want.values, atol=1e-5)
    assert load_onnx(tiny_rerank_onnx_dir).card.task == "rerank"


class _States(nn.Module):
    """What other exporters (optimum, sentence-transformers) write: token states or logits."""

    def __init__(self, model: Any, logits: bool) -> None:
        super().__init__()
        self.encoder, self.logits = model.backend.encoder, logits

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        hidden = self.encoder(input_ids.int(), token_type_ids.int(), attention_mask.bool())
        return self.encoder.classify(hidden) if self.logits else hidden


def _foreign(model: Any, exported: Path, out: Path, *, logits: bool) -> Path:
    """A copy of an exported directory whose graph gives int64-fed token states or logits."""
    shutil.copytree(exported, out)
    batch = model.collate(model.prepare(TextInputs(["a short one", "and a longer one"])).items)
    args = (batch.input_ids.long(), batch.attention_mask.long(), batch.token_type_ids.long())
    name = "logits" if logits else "last_hidden_state"
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _States(model, logits), args, str(out / "model.onnx"), input_names=names,
            output_names=[name], dynamo=False,
            dynamic_axes={n: {0: "b", 1: "t"} for n in names} | {name: {0: "b"}},
        )  # fmt: skip
    return out


def test_token_states_are_pooled_and_logits_activated_here(
    tmp_path: Path,
    tiny_embed_dir: Path,
    tiny_embed_onnx_dir: Path,
    tiny_classify_dir: Path,
    tiny_classify_onnx_dir: Path,
    load: Loader,
) -> None:
    texts = varied_sentences(30, seed=5)
    inputs = TextInputs(texts, truncate=True)
    embedder = load(tiny_embed_dir)
    states = _foreign(embedder, tiny_embed_onnx_dir, tmp_path / "states", logits=False)
    ours, theirs = run_inline(load_onnx(states), inputs), run_inline(embedder, inputs)
    assert isinstance(ours, Embeddings) and isinstance(theirs, Embeddings)
    assert (ours.vectors * theirs.vectors).sum(axis=1).min() >= 0.99999
    classifier = load(tiny_classify_dir)
    logits = _foreign(classifier, tiny_classify_onnx_dir, tmp_path / "logits", logits=True)
    got, want = run_inline(load_onnx(logits), inputs), run_inline(classifier, inputs)
    assert isinstance(got, Classifications) and isinstance(want, Classifications)
    assert [c.label for c in got.items] == [c.label for c in want.items]
    assert abs(got.items[3].score - want.items[3].score) <= 1e-5
    # A graph of logits does not embed; a classifier's graph does not serve another dtype.
    shutil.copyfile(logits / "model.onnx", states / "model.onnx")
    with pytest.raises(ModelLoadError, match=r"gives \['logits'\]; this task reads"):
        load_onnx(states)
    with pytest.raises(ModelLoadError, match="computes in float32, not float16"):
        load_model(logits, {}, LoadOptions(CPU, torch.float16, backend="onnx"))
