"""The protocols: one module per wire format, each a thin translation to the serving layer.

    native    /v1/predict, /v1/models, /v1/info
    openai    /v1/embeddings
    chat      /v1/completions, /v1/chat/completions (generation, streamed or not)
    rerank    /v1/rerank (the Cohere / Jina / vLLM shape)
    oip       /v2 (the Open Inference Protocol: Triton, KServe, MLServer clients)
    health    /livez, /readyz, /startupz, /metrics
    openapi   /openapi.json (the document of every module's routes)

Each module holds its request types and handlers and exposes `routes()`, and `openapi_paths()`:
its routes' OpenAPI path items, whose request bodies are the `schema` types the handlers check
bodies with (a route missing from them fails tests/sidecar/test_openapi.py). A handler parses the
body into `sidecar.models` inputs, asks the `Service` (through the app's keys) for the model and
its engine, and renders the result; it never touches a tokenizer or torch.
"""

from __future__ import annotations

from sidecar.api import chat, health, native, oip, openai, openapi, rerank

PROTOCOLS = (native, openai, chat, rerank, oip, openapi)
# Path prefix -> the error shape of a protocol that has its own (the middleware renders it).
ERROR_BODIES = {oip.PATH_PREFIX: oip.error_body} | {path: chat.error_body for path in chat.PATHS}

__all__ = [
    "ERROR_BODIES",
    "PROTOCOLS",
    "chat",
    "health",
    "native",
    "oip",
    "openai",
    "openapi",
    "rerank",
]
