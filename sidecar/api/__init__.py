"""The protocols: one module per wire format, each a thin translation to the serving layer.

    native    /v1/predict, /v1/models, /v1/info
    openai    /v1/embeddings
    rerank    /v1/rerank (the Cohere / Jina / vLLM shape)
    health    /livez, /readyz, /startupz, /metrics

Each module holds its request types and handlers and exposes `routes()`. A handler parses the
body into `sidecar.models` inputs, asks the `Service` (through the app's keys) for the model and
its engine, and renders the result; it never touches a tokenizer or torch.
"""

from __future__ import annotations

from sidecar.api import health, native, openai, rerank

PROTOCOLS = (native, openai, rerank)

__all__ = ["PROTOCOLS", "health", "native", "openai", "rerank"]
