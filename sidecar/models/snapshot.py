"""Reading a Hugging Face snapshot's JSON files: config.json and the sentence-transformers set."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.models.errors import ModelLoadError
from sidecar.models.pooling import pooling_modes

_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


def read_json(directory: Path, name: str, kind: type = dict) -> Any:
    """A JSON file of the snapshot, which must hold a `kind` (an object unless told)."""
    try:
        value = json.loads((directory / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {name} from the model directory: {exc}") from None
    if not isinstance(value, kind):
        raise ModelLoadError(f"{name} must hold a JSON {'list' if kind is list else 'object'}")
    return value


def architectures(config: Mapping[str, Any]) -> list[str]:
    """config.json's `architectures`, as strings."""
    return [str(a) for a in config.get("architectures") or []]


def has_classification_head(config: Mapping[str, Any]) -> bool:
    """The checkpoint is a *ForSequenceClassification one: it carries a classifier head."""
    return any("ForSequenceClassification" in a for a in architectures(config))


def labels(config: Mapping[str, Any], num_labels: int) -> tuple[str, ...]:
    """Label names by index from `id2label`, Hugging Face's `LABEL_<i>` where none is given."""
    id2label = config.get("id2label") or {}
    try:
        by_index = {int(index): str(label) for index, label in id2label.items()}
    except (AttributeError, ValueError):
        raise ModelLoadError("config.json id2label must map label indices to names") from None
    return tuple(by_index.get(i, f"LABEL_{i}") for i in range(num_labels))


@dataclass(frozen=True)
class SentenceTransformerSpec:
    """What a snapshot's sentence-transformers files ask of the embedding pipeline."""

    pooling: tuple[str, ...] = ("mean",)
    normalizes: bool = False
    max_seq_length: int | None = None
    lowercase: bool = False


def sentence_transformers_spec(directory: Path) -> SentenceTransformerSpec:
    """Pooling, normalisation and length limits from modules.json and its siblings."""
    modules: list[Any] = []
    if (directory / "modules.json").is_file():
        modules = read_json(directory, "modules.json", list)
        if not all(isinstance(m, dict) for m in modules):
            raise ModelLoadError("modules.json must hold a list of objects")
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules}
    unknown = sorted(set(kinds) - set(_KNOWN_MODULES))
    if unknown:
        raise ModelLoadError(
            f"modules.json sentence-transformers modules {unknown} are not supported"
        )
    if str(kinds.get("Transformer", {}).get("path", "")) not in ("", "."):
        raise ModelLoadError("modules.json: a Transformer module outside the root is not supported")
    pooling_path = str(kinds.get("Pooling", {}).get("path", "1_Pooling"))
    pooling: tuple[str, ...] = ("mean",)
    if (directory / pooling_path / "config.json").is_file():
        pooling = pooling_modes(read_json(directory, f"{pooling_path}/config.json"))
    max_seq_length, lowercase = None, False
    if (directory / "sentence_bert_config.json").is_file():
        raw = read_json(directory, "sentence_bert_config.json")
        max_seq_length = raw.get("max_seq_length")
        if max_seq_length is not None and (
            not isinstance(max_seq_length, int) or max_seq_length < 1
        ):
            raise ModelLoadError(f"sentence_bert_config.json max_seq_length {max_seq_length!r}")
        lowercase = raw.get("do_lower_case") is True
    return SentenceTransformerSpec(pooling, "Normalize" in kinds, max_seq_length, lowercase)
