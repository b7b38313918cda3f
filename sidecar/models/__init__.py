"""Model families and the text model the serving engine drives.

Imports torch, numpy, tokenizers and `loaders` only: never transformers, sentence-transformers,
aiohttp or the environment.
"""

from __future__ import annotations

from sidecar.models.bert import BertConfig
from sidecar.models.errors import ModelLoadError
from sidecar.models.text_model import Batch, TextModel, load_text_model

__all__ = ["Batch", "BertConfig", "ModelLoadError", "TextModel", "load_text_model"]
