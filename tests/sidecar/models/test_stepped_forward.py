"""A forward pass in steps (`SteppedModel`): what the batcher runs a job's batches with, so that
an interactive batch can run between two layers. It must give the whole pass's rows bit for bit."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar.models import PairInputs, SteppedModel
from sidecar.models.cross_encoder import CrossEncoder
from sidecar.models.text_model import TextModel
from tests.sidecar.models.conftest import Loader
from tests.snapshots import make_bert_snapshot, make_cross_encoder_snapshot

SENTENCES = ["hi", "a somewhat longer sentence than the first one", "three words here"]


def run_steps(steps: Generator[None, None, Any]) -> tuple[int, Any]:
    """(pauses, result) of a stepped pass run to its end."""
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return pauses, done.value
        pauses += 1


def test_the_demo_model_in_steps_gives_the_whole_pass_bit_for_bit(demo_model: TextModel) -> None:
    assert isinstance(demo_model, SteppedModel)
    assert demo_model.steps == 13  # the embeddings, then six layers in halves
    batch = demo_model.collate(demo_model.tokenize(SENTENCES))  # padded: the masked path
    whole = demo_model.forward(batch)
    pauses, stepped = run_steps(demo_model.forward_steps(batch))
    assert pauses == demo_model.steps - 1
    assert stepped.dtype == np.float32 and np.array_equal(stepped, whole)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_a_classifier_in_steps_gives_the_whole_pass_bit_for_bit(
    tmp_path: Path, load: Loader, model_type: str
) -> None:
    model = load(make_bert_snapshot(tmp_path, task="classify", num_labels=3, model_type=model_type))
    assert isinstance(model, TextModel) and model.task == "classify"
    batch = model.collate(model.tokenize(SENTENCES))
    pauses, stepped = run_steps(model.forward_steps(batch))
    assert pauses == model.steps - 1 >= 1
    assert np.array_equal(stepped, model.forward(batch))


def test_a_reranker_in_steps_gives_the_whole_pass_bit_for_bit(tmp_path: Path, load: Loader) -> None:
    model = load(make_cross_encoder_snapshot(tmp_path))
    assert isinstance(model, CrossEncoder) and isinstance(model, SteppedModel)
    batch = model.collate(model.prepare(PairInputs("query", SENTENCES)).items)
    pauses, stepped = run_steps(model.forward_steps(batch))
    assert pauses == model.steps - 1 >= 1
    assert np.array_equal(stepped, model.forward(batch))


def test_a_pass_dropped_at_a_pause_leaves_inference_mode_off(demo_model: TextModel) -> None:
    import torch

    steps = demo_model.forward_steps(demo_model.collate(demo_model.tokenize(SENTENCES)))
    next(steps)
    assert not torch.is_inference_mode_enabled()  # nothing held across the pause
    steps.close()
    assert not torch.is_inference_mode_enabled()
