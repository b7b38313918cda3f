"""The cross-encoder family (rerank) against sentence-transformers and transformers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sidecar.models import (
    InputTooLongError,
    ModelLoadError,
    PairInputs,
    Scores,
    TextInputs,
    WrongInputsError,
    run_inline,
)
from sidecar.models.cross_encoder import CrossEncoder
from sidecar.models.text_model import TextModel
from tests.sidecar.models.conftest import Loader
from tests.sidecar.models.sentences import varied_sentences
from tests.snapshots import make_bert_snapshot, make_cross_encoder_snapshot

QUERY = "How do sidecar containers share a socket with the app?"


def _reference(directory: Path, max_length: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import CrossEncoder as Reference

        return Reference(str(directory), device="cpu", max_length=max_length)


def _scores(model: CrossEncoder, documents: list[str], **options: Any) -> np.ndarray:
    result = run_inline(model, PairInputs(QUERY, documents, **options), batch_size=8)
    assert isinstance(result, Scores)
    return result.values


@pytest.mark.parametrize("legacy", [False, True])
def test_a_saved_cross_encoder_is_detected_as_a_reranker(
    tmp_path: Path, load: Loader, legacy: bool
) -> None:
    model = load(make_cross_encoder_snapshot(tmp_path, legacy=legacy))
    assert isinstance(model, CrossEncoder)
    assert model.card.task == "rerank" and model.card.max_input_tokens == 512
    # A one-label classifier that nothing marks as a cross-encoder still classifies...
    plain = load(make_bert_snapshot(tmp_path / "plain", task="classify", num_labels=1))
    assert isinstance(plain, TextModel) and plain.task == "classify"
    # ... unless rerank is asked for.
    asked = load(tmp_path / "plain", task="rerank")
    assert isinstance(asked, CrossEncoder)


def test_scores_match_sentence_transformers(tmp_path: Path, load: Loader) -> None:
    directory = make_cross_encoder_snapshot(tmp_path)
    model = load(directory, max_input_tokens=64)
    documents = varied_sentences(40, seed=6)
    ours = _scores(model, documents, truncate=True)
    reference = _reference(directory, max_length=64)
    theirs = reference.predict([(QUERY, d) for d in documents], batch_size=16)
    lengths = model.prepare(PairInputs(QUERY, documents, truncate=True)).costs
    assert min(lengths) < 32 and max(lengths) == 64  # short pairs, and pairs cut to the limit
    with pytest.raises(InputTooLongError):
        model.prepare(PairInputs(QUERY, documents))
    assert ours.shape == theirs.shape == (40,)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert theirs.std() > 0.01  # the random head separates documents enough for parity to bite


def test_raw_scores_are_the_logits_of_transformers(tmp_path: Path, load: Loader) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = make_cross_encoder_snapshot(tmp_path)
    model = load(directory)
    documents = varied_sentences(12, seed=7)
    ours = _scores(model, documents, raw_scores=True)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    reference = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    features = tokenizer([QUERY] * 12, documents, padding=True, return_tensors="pt")
    assert features["token_type_ids"].max() == 1  # the document is the second segment
    with torch.inference_mode():
        logits = reference(**features).logits[:, 0].numpy()
    np.testing.assert_allclose(ours, logits, atol=1e-5)
    sigmoid = _scores(model, documents)
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-logits)), atol=1e-6)


def test_an_identity_activation_gives_logits(tmp_path: Path, load: Loader) -> None:
    identity = load(
        make_cross_encoder_snapshot(tmp_path, activation="torch.nn.modules.linear.Identity")
    )
    documents = ["a fox", "a sidecar container and its socket"]
    np.testing.assert_array_equal(
        _scores(identity, documents), _scores(identity, documents, raw_scores=True)
    )


def test_an_activation_off_the_allow_list_is_refused(tmp_path: Path, load: Loader) -> None:
    directory = make_cross_encoder_snapshot(tmp_path, activation="os.system")
    with pytest.raises(ModelLoadError, match=r"activation 'os\.system' is not supported"):
        load(directory)


def test_rerank_needs_a_one_label_classifier(tmp_path: Path, load: Loader) -> None:
    with pytest.raises(ModelLoadError, match="one label"):
        load(make_bert_snapshot(tmp_path, task="classify"), task="rerank")
    with pytest.raises(ModelLoadError, match="one label"):
        load(make_bert_snapshot(tmp_path / "embed"), task="rerank")


def test_long_pairs_are_refused_unless_truncated(tmp_path: Path, load: Loader) -> None:
    model = load(make_cross_encoder_snapshot(tmp_path), max_input_tokens=32)
    long_document = " ".join(varied_sentences(10, seed=8))
    # Over the character cap (16 a token) it is refused before tokenizing, else by its tokens.
    with pytest.raises(InputTooLongError, match=r"document 1 with the query has \d+ charac"):
        model.prepare(PairInputs(QUERY, ["short", long_document]))
    prepared = model.prepare(PairInputs(QUERY, ["short", long_document], truncate=True))
    assert prepared.costs[1] == 32
    with pytest.raises(WrongInputsError):
        model.prepare(TextInputs(["a text is not a pair"]))


def test_config_json_of_a_cross_encoder_round_trips(tmp_path: Path) -> None:
    directory = make_cross_encoder_snapshot(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert len(config["id2label"]) == 1


def test_padded_shapes_and_warmup_shapes_keep_the_scores(tmp_path: Path, load: Loader) -> None:
    model = load(make_cross_encoder_snapshot(tmp_path))
    documents = varied_sentences(5)
    pairs = model.prepare(PairInputs(QUERY, documents, truncate=True)).items
    exact = model.forward(model.collate(pairs))
    longest = max(len(ids) for ids, _ in pairs)
    padded = model.forward(model.collate(pairs, shape=lambda n, t: (8, longest + 9)))
    assert padded.shape == exact.shape == (5,)
    np.testing.assert_allclose(padded, exact, rtol=1e-5, atol=1e-6)
    timings = model.warmup(4, 4096, shapes=[(2, 32), (1, 64), (1, 3)])  # 3: no room for a pair
    assert [tokens for tokens, _ in timings] == [64, 64]
