"""The demo model (all-MiniLM-L6-v2) against sentence-transformers, the reference pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from sidecar.models import Embeddings, TextInputs, run_inline
from sidecar.models.text_model import TextModel
from tests.sidecar.models.conftest import Loader
from tests.sidecar.models.sentences import varied_sentences


def embed(model: TextModel, texts: list[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
    """L2-normalised embeddings through the served recipe, batched by length as the server does."""
    result = run_inline(model, TextInputs(texts, truncate=True), batch_size=batch_size)
    assert isinstance(result, Embeddings)
    return result.vectors


def test_demo_model_reports_its_contract(demo_model: TextModel) -> None:
    assert demo_model.task == "embed"
    assert demo_model.architecture == "BertModel"
    assert demo_model.max_input_tokens == 256  # sentence_bert_config.json max_seq_length
    assert demo_model.embedding_dim == 384
    assert demo_model.labels is None
    assert demo_model.normalizes is True
    assert demo_model.dtype == torch.float32


def test_token_ids_match_sentence_transformers(demo_model: TextModel, reference_st: Any) -> None:
    texts = varied_sentences(220)
    raw = demo_model.tokenize(texts)
    ours = [demo_model.truncate(seq, 256) for seq in raw]
    features = reference_st.preprocess(texts)
    mask = features["attention_mask"].bool()
    theirs = [row[keep].tolist() for row, keep in zip(features["input_ids"], mask, strict=True)]
    assert ours == theirs
    lengths = [len(seq) for seq in raw]
    assert min(lengths) == 2 and max(lengths) > 400  # [CLS] [SEP] up to well past truncation
    assert sum(length > 256 for length in lengths) >= 8


def test_embeddings_match_sentence_transformers(demo_model: TextModel, reference_st: Any) -> None:
    texts = varied_sentences(220)
    ours = embed(demo_model, texts)
    theirs = reference_st.encode(texts, batch_size=32, normalize_embeddings=False)
    cosines = (ours * theirs).sum(axis=1) / np.linalg.norm(theirs, axis=1)
    worst = int(cosines.argmin())
    assert cosines.min() >= 0.9999, f"text {worst} ({texts[worst][:60]!r}): {cosines[worst]}"


def test_padding_does_not_change_an_embedding(demo_model: TextModel) -> None:
    texts = varied_sentences(60)
    short = "A short sentence, padded inside a batch of long ones."
    long_ones = sorted(texts, key=len)[-7:]
    alone = embed(demo_model, [short])[0]
    in_batch = embed(demo_model, [*long_ones[:3], short, *long_ones[3:]], batch_size=8)[3]
    assert float(alone @ in_batch) >= 0.99999


def test_bfloat16_stays_close_to_float32(demo_dir: Path, load: Loader) -> None:
    # bf16 matmuls are emulated, hence slow, on CPUs without AVX512-BF16: keep inputs short.
    model = load(demo_dir, dtype=torch.bfloat16, max_input_tokens=64)
    assert model.dtype == torch.bfloat16
    texts = varied_sentences(36, seed=1)
    ours, reference = embed(model, texts), embed(load(demo_dir, max_input_tokens=64), texts)
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.999


@pytest.mark.parametrize("max_tokens", [3, 4, 17, 64, 256, 512])
def test_truncate_matches_hugging_face(
    demo_model: TextModel, reference_st: Any, max_tokens: int
) -> None:
    text = " ".join(varied_sentences(30, seed=2))  # about two thousand tokens
    ours = demo_model.truncate(demo_model.tokenize([text])[0], max_tokens)
    theirs = reference_st.tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]
    assert ours == theirs
    assert len(ours) == max_tokens and ours[0] == 101 and ours[-1] == 102  # [CLS] ... [SEP]


def test_truncate_leaves_short_input_alone_and_refuses_room_for_nothing(
    demo_model: TextModel,
) -> None:
    ids = demo_model.tokenize(["hello world"])[0]
    assert demo_model.truncate(ids, 4) == ids == [101, 7592, 2088, 102]
    assert demo_model.truncate(ids, 3) == [101, 7592, 102]
    with pytest.raises(ValueError, match="special tokens"):
        demo_model.truncate(ids, 2)
