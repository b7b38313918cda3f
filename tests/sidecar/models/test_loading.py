"""Strict loading: what the text model family refuses, and what it knowingly ignores."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sidecar.models import ModelLoadError
from sidecar.models.bert import BertConfig
from sidecar.models.text_model import TextModel
from tests.sidecar.models.conftest import Loader, build, read_weights
from tests.snapshots import make_bert_snapshot


def _load(directory: Path, weights: dict[str, torch.Tensor], **kwargs: Any) -> TextModel:
    model = build(directory, weights, **kwargs)
    assert isinstance(model, TextModel)
    return model


def test_missing_and_unexpected_tensors_are_listed_sorted(tmp_path: Path) -> None:
    directory = make_bert_snapshot(tmp_path)
    weights = read_weights(directory)
    del weights["encoder.layer.1.output.dense.bias"]
    del weights["encoder.layer.0.attention.self.key.weight"]
    weights["encoder.layer.1.extra.weight"] = torch.zeros(2)
    weights["encoder.layer.0.extra.weight"] = torch.zeros(2)
    expected = (
        "missing tensors ['encoder.layer.0.attention.self.key.weight', "
        "'encoder.layer.1.output.dense.bias'], unexpected tensors "
        "['encoder.layer.0.extra.weight', 'encoder.layer.1.extra.weight']"
    )
    with pytest.raises(ModelLoadError, match=re.escape(expected)):
        _load(directory, weights)


def test_a_missing_tensor_alone_is_an_error(tmp_path: Path) -> None:
    directory = make_bert_snapshot(tmp_path, task="classify")
    weights = read_weights(directory)
    del weights["bert.embeddings.LayerNorm.bias"]
    del weights["classifier.bias"]
    expected = (
        "missing tensors ['bert.embeddings.LayerNorm.bias', 'classifier.bias'], "
        "unexpected tensors []"
    )
    with pytest.raises(ModelLoadError, match=re.escape(expected)):
        _load(directory, weights)


def test_an_unexpected_tensor_alone_is_an_error(tmp_path: Path) -> None:
    directory = make_bert_snapshot(tmp_path)
    weights = read_weights(directory) | {"decoder.weight": torch.zeros(1)}
    with pytest.raises(ModelLoadError, match=re.escape("unexpected tensors ['decoder.weight']")):
        _load(directory, weights)


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    directory = make_bert_snapshot(tmp_path)
    weights = read_weights(directory)
    weights["encoder.layer.0.attention.self.value.weight"] = torch.zeros(32, 31)
    with pytest.raises(
        ModelLoadError, match=r"encoder\.layer\.0\.attention\.self\.value\.weight.*\(32, 31\)"
    ):
        _load(directory, weights)


def test_known_unused_tensors_and_legacy_names_load(tmp_path: Path, load: Loader) -> None:
    directory = make_bert_snapshot(tmp_path)
    weights = read_weights(directory)
    reference = load(directory)
    # BertForPreTraining-style extras, buffers, a prefix, and TF-era LayerNorm names.
    renamed = {
        "bert."
        + name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): tensor
        for name, tensor in weights.items()
    }
    renamed["bert.embeddings.position_ids"] = torch.arange(512)[None, :]
    renamed["cls.predictions.bias"] = torch.zeros(30522)
    model = _load(directory, renamed)
    batch = reference.collate(
        reference.tokenize(["hello there", "general kenobi, you are a bold one"])
    )
    assert np.array_equal(model.forward(batch), reference.forward(batch))


def test_the_same_weight_under_two_names_is_an_error(tmp_path: Path) -> None:
    directory = make_bert_snapshot(tmp_path)
    weights = read_weights(directory)
    weights["bert.pooler.dense.bias"] = weights["pooler.dense.bias"]
    with pytest.raises(ModelLoadError, match="the same weight twice"):
        _load(directory, weights)


def test_classify_needs_a_classification_checkpoint(tmp_path: Path) -> None:
    directory = make_bert_snapshot(tmp_path)
    with pytest.raises(ModelLoadError, match=r"task 'classify' needs a sequence-classification"):
        _load(directory, read_weights(directory), task="classify")


def test_an_unknown_task_is_refused(tmp_path: Path) -> None:
    directory = make_bert_snapshot(tmp_path)
    with pytest.raises(ModelLoadError, match=r"task 'generate' is not supported"):
        _load(directory, read_weights(directory), task="generate")


def test_a_classifier_can_serve_embeddings(tmp_path: Path, load: Loader) -> None:
    model = load(make_bert_snapshot(tmp_path, task="classify"), task="embed")
    assert model.task == "embed" and model.embedding_dim == 32 and model.labels is None
    assert model.architecture == "BertForSequenceClassification"


@pytest.mark.parametrize(
    ("model_type", "positions", "limit"), [("bert", 512, 512), ("roberta", 514, 512)]
)
def test_max_input_tokens_above_the_position_limit_is_refused(
    tmp_path: Path, model_type: str, positions: int, limit: int
) -> None:
    directory = make_bert_snapshot(
        tmp_path, model_type=model_type, max_position_embeddings=positions
    )
    weights = read_weights(directory)
    with pytest.raises(
        ModelLoadError, match=f"max_input_tokens {limit + 1} .* limit of {limit} tokens"
    ):
        _load(directory, weights, max_input_tokens=limit + 1)
    assert _load(directory, weights, max_input_tokens=limit).max_input_tokens == limit


def test_max_input_tokens_defaults_and_caps(tmp_path: Path, load: Loader) -> None:
    assert load(make_bert_snapshot(tmp_path / "st")).max_input_tokens == 128
    assert load(make_bert_snapshot(tmp_path / "st"), max_input_tokens=300).max_input_tokens == 300
    assert load(make_bert_snapshot(tmp_path / "st"), max_input_tokens=16).max_input_tokens == 16
    no_limit = make_bert_snapshot(
        tmp_path / "none", max_seq_length=None, max_position_embeddings=64
    )
    assert load(no_limit).max_input_tokens == 64
    with pytest.raises(ModelLoadError, match="special tokens"):
        load(no_limit, max_input_tokens=2)


def test_no_tokenizer_json_is_an_error(tmp_path: Path) -> None:
    directory = make_bert_snapshot(tmp_path)
    (directory / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no tokenizer\.json"):
        _load(directory, read_weights(directory))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "t5"}, "model_type 't5' is not supported"),
        ({"hidden_act": "swish"}, "hidden_act 'swish' is not supported"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
        ({"num_attention_heads": 5}, "not a multiple of num_attention_heads 5"),
        ({"hidden_size": "32"}, "hidden_size must be a non-negative integer"),
    ],
)
def test_configs_this_module_cannot_run_are_refused(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    directory = make_bert_snapshot(tmp_path)
    config = json.loads((directory / "config.json").read_text()) | change
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        _load(directory, read_weights(directory))


def test_unsupported_sentence_transformers_modules_are_refused(tmp_path: Path) -> None:
    directory = make_bert_snapshot(tmp_path)
    modules = json.loads((directory / "modules.json").read_text())
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (directory / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match=re.escape("modules ['Dense'] are not supported")):
        _load(directory, read_weights(directory))


def test_new_style_pooling_config_is_read(tmp_path: Path, load: Loader) -> None:
    directory = make_bert_snapshot(tmp_path)
    config = {"embedding_dimension": 32, "pooling_mode": ["cls", "mean"], "include_prompt": True}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert load(directory).embedding_dim == 64


def test_without_sentence_transformers_files_embeddings_are_mean_pooled(
    tmp_path: Path, load: Loader
) -> None:
    with_files = load(make_bert_snapshot(tmp_path / "st", max_seq_length=None))
    bare = make_bert_snapshot(tmp_path / "bare")
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        (bare / name).unlink()
    shutil.rmtree(bare / "1_Pooling")
    model = load(bare)
    assert model.normalizes is False and model.max_input_tokens == 512
    batch = model.collate(model.tokenize(["mean pooled", "by default, padding excluded"]))
    assert (model.forward(batch) == with_files.forward(batch)).all()


def test_labels_default_to_hugging_face_names(tmp_path: Path, load: Loader) -> None:
    directory = make_bert_snapshot(tmp_path, task="classify", num_labels=2)
    config = json.loads((directory / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (directory / "config.json").write_text(json.dumps(config))
    assert load(directory).labels == ("LABEL_0", "LABEL_1")


def test_bert_config_reads_config_json(demo_dir: Path) -> None:
    config = BertConfig.from_dict(json.loads((demo_dir / "config.json").read_text()))
    assert config == BertConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
    )
    assert config.max_positions == 512
    roberta = BertConfig.from_dict({"model_type": "xlm-roberta", "max_position_embeddings": 514})
    assert roberta.pad_token_id == 1 and roberta.max_positions == 512


def test_a_json_file_of_the_wrong_shape_is_an_error(tmp_path: Path) -> None:
    directory = make_bert_snapshot(tmp_path)
    (directory / "sentence_bert_config.json").write_text("[256]")
    with pytest.raises(ModelLoadError, match=r"sentence_bert_config\.json must hold a JSON object"):
        _load(directory, read_weights(directory))
