"""Model families behind one interface (DESIGN section 11).

This package's own names, the interface and its errors, import neither torch nor a tokenizer,
so that the serving layer and the protocols can use them cheaply. The families and the registry
that builds them import torch; import them by module:

    from sidecar.models.families import FAMILIES, load_model   # snapshot + weights -> Model
    from sidecar.models.text_model import TextModel            # BERT-family embed / classify
    from sidecar.models.cross_encoder import CrossEncoder      # BERT-family rerank
    from sidecar.models.tensor_model import TensorModel        # an ONNX graph's own tensors

Models import torch, numpy, tokenizers and `loaders`, and for the ONNX backend onnx (to validate
a graph) and onnxruntime: never transformers, sentence-transformers, aiohttp, the environment or
the rest of the sidecar.
"""

from __future__ import annotations

from sidecar.models.errors import InputError, InputTooLongError, ModelLoadError, WrongInputsError
from sidecar.models.interface import (
    MAX_CHARS_PER_TOKEN,
    Classification,
    Classifications,
    Embeddings,
    Family,
    Inputs,
    LoadOptions,
    Model,
    ModelCard,
    PairInputs,
    Prepared,
    Result,
    Scores,
    SteppedModel,
    TensorInputs,
    Tensors,
    TensorSpec,
    TextInputs,
    run_inline,
)

__all__ = [
    "MAX_CHARS_PER_TOKEN",
    "Classification",
    "Classifications",
    "Embeddings",
    "Family",
    "InputError",
    "InputTooLongError",
    "Inputs",
    "LoadOptions",
    "Model",
    "ModelCard",
    "ModelLoadError",
    "PairInputs",
    "Prepared",
    "Result",
    "Scores",
    "SteppedModel",
    "TensorInputs",
    "TensorSpec",
    "Tensors",
    "TextInputs",
    "WrongInputsError",
    "run_inline",
]
