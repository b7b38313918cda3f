"""Tiny random-weight BERT-family models against transformers and sentence-transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sidecar.models import Embeddings, TextInputs, run_inline
from sidecar.models.pooling import POOLING_MODES
from sidecar.models.text_model import TextModel
from tests.sidecar.models.conftest import Loader
from tests.sidecar.models.sentences import varied_sentences
from tests.snapshots import SENTIMENT_LABELS, make_bert_snapshot

_POSITIONS = {"bert": 512, "roberta": 514, "xlm-roberta": 514}


def _padded_batch(model: TextModel, count: int, seed: int) -> Any:
    texts = varied_sentences(count, seed=seed)
    return model.collate([model.truncate(seq, 96) for seq in model.tokenize(texts)])


def _reference_logits(directory: Path, batch: Any) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification

    reference = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    with torch.inference_mode():
        output = reference(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            token_type_ids=batch.token_type_ids,
        )
    return output.logits  # type: ignore[no-any-return]


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta"])
def test_classifier_matches_transformers(tmp_path: Path, load: Loader, model_type: str) -> None:
    directory = make_bert_snapshot(
        tmp_path,
        task="classify",
        model_type=model_type,
        max_position_embeddings=_POSITIONS[model_type],
    )
    model = load(directory)
    assert model.task == "classify"
    assert model.labels == SENTIMENT_LABELS
    assert model.embedding_dim is None
    assert model.max_input_tokens == 512
    batch = _padded_batch(model, 24, seed=3)
    assert not bool(batch.attention_mask.all())  # padding is exercised
    ours = model.forward(batch)
    reference = _reference_logits(directory, batch).softmax(-1).numpy()
    assert ours.dtype == np.float32 and ours.shape == (24, 3)
    assert np.abs(ours - reference).max() <= 1e-4
    assert reference.std() > 0.05  # the random head is decisive enough for parity to mean much


def test_single_label_classifier_gives_sigmoid_scores(tmp_path: Path, load: Loader) -> None:
    directory = make_bert_snapshot(tmp_path, task="classify", num_labels=1)
    model = load(directory)
    assert model.labels == ("label_0",)
    batch = _padded_batch(model, 8, seed=5)
    reference = torch.sigmoid(_reference_logits(directory, batch)).numpy()
    assert np.abs(model.forward(batch) - reference).max() <= 1e-4


@pytest.mark.parametrize(
    ("model_type", "pooling"),
    [("bert", mode) for mode in POOLING_MODES] + [("roberta", "mean"), ("xlm-roberta", "cls")],
)
def test_embeddings_match_sentence_transformers(
    tmp_path: Path, load: Loader, model_type: str, pooling: str
) -> None:
    from sentence_transformers import SentenceTransformer

    directory = make_bert_snapshot(
        tmp_path,
        model_type=model_type,
        pooling=pooling,
        normalize=False,
        max_position_embeddings=_POSITIONS[model_type],
    )
    model = load(directory)
    assert model.normalizes is False
    assert model.max_input_tokens == 128
    texts = varied_sentences(40, seed=4)
    raw = run_inline(model, TextInputs(texts, truncate=True, normalize=False), batch_size=64)
    assert isinstance(raw, Embeddings)
    ours = raw.vectors
    reference = SentenceTransformer(str(directory), device="cpu")
    theirs = reference.encode(texts, batch_size=64, normalize_embeddings=False)
    assert ours.shape == theirs.shape == (40, 32)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
