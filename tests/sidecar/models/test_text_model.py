"""TextModel mechanics: tokenize, collate, forward limits, warm-up."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from sidecar.models.text_model import TextModel
from sidecar.models.tokens import Batch
from tests.sidecar.models.conftest import Loader
from tests.snapshots import make_bert_snapshot


def test_tokenize_ignores_padding_and_truncation_pinned_in_tokenizer_json(
    demo_model: TextModel,
) -> None:
    # The demo tokenizer.json pins padding and truncation to 128 tokens.
    short, long = demo_model.tokenize(["hi", "word " * 300])
    assert short == [101, 7632, 102]
    assert len(long) == 302 and long[0] == 101 and long[-1] == 102


def test_collate_right_pads_to_the_longest(demo_model: TextModel) -> None:
    batch = demo_model.collate([[101, 7, 102], [101, 102], [101, 5, 6, 7, 102]])
    assert isinstance(batch, Batch)
    assert batch.input_ids.tolist() == [
        [101, 7, 102, 0, 0],
        [101, 102, 0, 0, 0],
        [101, 5, 6, 7, 102],
    ]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.token_type_ids.tolist() == [[0] * 5] * 3
    assert (batch.num_items, batch.padded) == (3, True)
    # The dtypes the device takes as they are: int32 ids for the embedding lookup, a bool mask.
    dtypes = [t.dtype for t in (batch.input_ids, batch.attention_mask, batch.token_type_ids)]
    assert dtypes == [torch.int32, torch.bool, torch.int32]
    assert all(t.is_contiguous() for t in (batch.input_ids, batch.attention_mask))
    assert demo_model.collate([[101, 7, 102], [101, 8, 102]]).padded is False


def test_collate_pads_to_the_shape_asked_with_filler_rows(demo_model: TextModel) -> None:
    seqs = [[101, 7, 102], [101, 102]]
    batch = demo_model.collate(seqs, shape=lambda items, longest: (items + 2, longest + 3))
    assert batch.input_ids.tolist() == [
        [101, 7, 102, 0, 0, 0],
        [101, 102, 0, 0, 0, 0],
        [101, 7, 102, 0, 0, 0],  # filler rows: copies of the first
        [101, 7, 102, 0, 0, 0],
    ]
    assert batch.attention_mask.sum(1).tolist() == [3, 2, 3, 3]
    assert (batch.num_items, batch.padded) == (2, True)
    with pytest.raises(ValueError, match="cannot hold 2 sequences"):
        demo_model.collate(seqs, shape=lambda items, longest: (1, longest))


def test_forward_drops_filler_rows_and_matches_the_unpadded_batch(demo_model: TextModel) -> None:
    seqs = demo_model.tokenize(["a short one", "a somewhat longer sentence than that", "hi"])
    exact = demo_model.forward(demo_model.collate(seqs))
    padded = demo_model.forward(demo_model.collate(seqs, shape=lambda n, t: (8, 24)))
    assert padded.shape == exact.shape == (3, 384)
    cosines = (
        (padded * exact).sum(1) / np.linalg.norm(padded, axis=1) / np.linalg.norm(exact, axis=1)
    )
    assert cosines.min() >= 0.99999


def test_collate_pads_roberta_with_its_pad_id(tmp_path: Path, load: Loader) -> None:
    model = load(make_bert_snapshot(tmp_path, model_type="roberta", max_position_embeddings=514))
    assert model.collate([[0, 9, 2], [0, 2]]).input_ids.tolist() == [[0, 9, 2], [0, 2, 1]]


def test_collate_refuses_nothing_to_run(demo_model: TextModel) -> None:
    with pytest.raises(ValueError, match="at least one sequence"):
        demo_model.collate([])
    with pytest.raises(ValueError, match="no empty ones"):
        demo_model.collate([[101, 102], []])


def test_forward_refuses_more_tokens_than_positions(tmp_path: Path, load: Loader) -> None:
    model = load(make_bert_snapshot(tmp_path, max_position_embeddings=16, max_seq_length=None))
    assert model.forward(model.collate([[101, *range(1000, 1014), 102]])).shape == (1, 32)
    with pytest.raises(ValueError, match="17 tokens exceeds the model's 16"):
        model.forward(model.collate([[101, *range(1000, 1015), 102]]))


def test_forward_returns_float32_whatever_the_model_dtype(tmp_path: Path, load: Loader) -> None:
    model = load(make_bert_snapshot(tmp_path), dtype=torch.bfloat16)
    out = model.forward(model.collate(model.tokenize(["one", "two three"])))
    assert out.dtype == np.float32 and out.shape == (2, 32) and np.isfinite(out).all()


def test_warmup_covers_shapes_within_the_token_budget(
    tmp_path: Path, load: Loader, caplog: pytest.LogCaptureFixture
) -> None:
    model = load(make_bert_snapshot(tmp_path))  # max_input_tokens 128
    with caplog.at_level(logging.INFO, logger="sidecar.models.text_model"):
        model.warmup(max_batch=4, max_tokens=100)
    (record,) = [r for r in caplog.records if r.getMessage().startswith("warmed up")]
    assert isinstance(record.args, tuple)
    shapes = record.args[1]
    assert shapes == [(1, 8), (4, 8), (1, 64), (1, 100)]


def test_warmup_runs_exactly_the_shapes_asked(
    tmp_path: Path, load: Loader, caplog: pytest.LogCaptureFixture
) -> None:
    model = load(make_bert_snapshot(tmp_path))  # max_input_tokens 128
    with caplog.at_level(logging.INFO, logger="sidecar.models.text_model"):
        timings = model.warmup(4, 1000, shapes=[(3, 16), (1, 24), (2, 2), (1, 200)])
    (record,) = [r for r in caplog.records if r.getMessage().startswith("warmed up")]
    assert isinstance(record.args, tuple)
    assert record.args[1] == [(3, 16), (1, 24)]  # 2 tokens hold no text; 200 pass the limit
    assert [tokens for tokens, _ in timings] == [48, 24]
