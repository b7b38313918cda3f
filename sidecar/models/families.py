"""The model families, and building the right one for a snapshot and a task.

Adding a family is one module exposing a `Family` and one line in `FAMILIES`. The order is the
order of detection: when no task is asked for, the first family whose `detect` names one serves
the snapshot. Only the families of the backend asked for (`LoadOptions.backend`) are candidates.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sidecar.models import cross_encoder, decoder, onnx_model, text_model
from sidecar.models.errors import ModelLoadError
from sidecar.models.interface import Family, LoadOptions, Model
from sidecar.models.snapshot import read_json

logger = logging.getLogger(__name__)

FAMILIES: tuple[Family, ...] = (
    cross_encoder.FAMILY,
    text_model.FAMILY,
    onnx_model.FAMILY,
    decoder.LLAMA_FAMILY,
    decoder.GPT2_FAMILY,
)


def load_model(
    directory: Path, weights: Mapping[str, torch.Tensor], options: LoadOptions
) -> Model[Any, Any, Any]:
    """Build the model a snapshot directory describes, for the task asked (or detected).

    Args:
        directory: a Hugging Face snapshot: config.json, tokenizer.json and what the family reads;
            for the onnx backend, model.onnx and what sits beside it.
        weights: the checkpoint's tensors by name (none for the onnx backend).
        options: backend, device, dtype, task (None: detected) and input length cap.

    Raises:
        ModelLoadError: no family builds the checkpoint or serves the task, or the family
            refuses the files.
    """
    graph = options.backend != "torch"
    has_config = not graph or (directory / "config.json").is_file()
    config = read_json(directory, "config.json") if has_config else {}
    model_type = config.get("model_type")
    candidates = [
        family
        for family in FAMILIES
        if family.backend == options.backend
        and (model_type in family.model_types or not family.model_types)
    ]
    if not candidates:
        supported = sorted({t for family in FAMILIES for t in family.model_types})
        raise ModelLoadError(
            f"config.json model_type {model_type!r} is not supported "
            f"(supported: {', '.join(supported)})"
        )
    detected = (family.detect(config, directory) for family in candidates)
    task = options.task or next((task for task in detected if task is not None), None)
    family = next((family for family in candidates if task in family.tasks), None)
    if task is None or family is None:
        tasks = [task for family in candidates for task in family.tasks]
        kind = f"{model_type} checkpoints" if not graph else "ONNX graphs"
        raise ModelLoadError(
            f"task {task!r} is not supported for {kind} (supported: {', '.join(tasks)})"
        )
    logger.debug("%s snapshot: %s for %s", model_type or options.backend, family.name, task)
    return family.load(directory, weights, dataclasses.replace(options, task=task))
