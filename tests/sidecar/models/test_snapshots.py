"""tests/snapshots.py writes checkpoints the reference libraries load as their own."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.snapshots import ARCHITECTURES, make_bert_snapshot

_POSITIONS = {"bert": 512, "roberta": 514, "xlm-roberta": 514}


@pytest.mark.parametrize("task", ["embed", "classify"])
@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta"])
def test_transformers_loads_the_snapshot_with_nothing_missing(
    tmp_path: Path, model_type: str, task: str
) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification

    started = time.perf_counter()
    directory = make_bert_snapshot(
        tmp_path, task=task, model_type=model_type, max_position_embeddings=_POSITIONS[model_type]
    )
    assert time.perf_counter() - started < 1.0
    auto = AutoModelForSequenceClassification if task == "classify" else AutoModel
    model, info = auto.from_pretrained(str(directory), output_loading_info=True)
    # transformers picks the class from model_type and the Auto class, not from our table.
    assert type(model).__name__ == ARCHITECTURES[(model_type, task)]
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"] and not info["error_msgs"]


def test_an_unknown_pooling_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        make_bert_snapshot(tmp_path, pooling="median")
