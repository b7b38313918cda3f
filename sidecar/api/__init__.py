"""The protocols: one module per wire format, each a thin translation to the serving layer.

    native    /v1/predict, /v1/models, /v1/info
    openai    /v1/embeddings
    chat      /v1/completions, /v1/chat/completions (generation, streamed or not)
    rerank    /v1/rerank (the Cohere / Jina / vLLM shape)
    jobs      /v1/jobs (durable bulk work; job_lines: the lines of jobs and batches)
    batches   /v1/files, /v1/batches (the OpenAI Batch API on the same runner)
    oip       /v2 (the Open Inference Protocol: Triton, KServe, MLServer clients)
    health    /livez, /readyz, /startupz, /metrics
    admin     /admin/v1 (model versions; only on the admin socket, never in PROTOCOLS)
    openapi   /openapi.json (the document of every module's routes)

Each module holds its request types and handlers and exposes `routes()`, and `openapi_paths()`:
its routes' OpenAPI path items, whose request bodies are the `schema` types the handlers check
bodies with (a route missing from them fails tests/sidecar/test_openapi.py). A handler parses the
body into `sidecar.models` inputs, asks the `Service` (through the app's keys) for the model and
its engine, and renders the result; it never touches a tokenizer or torch.
"""

from __future__ import annotations

from sidecar.api import admin, batches, chat, health, jobs, native, oip, openai, openapi, rerank

PROTOCOLS = (native, openai, chat, rerank, oip, jobs, batches, openapi)
# Path prefix -> the error shape of a protocol that has its own (the middleware renders it).
ERROR_BODIES = {oip.PATH_PREFIX: oip.error_body} | {path: chat.error_body for path in chat.PATHS}

__all__ = [
    "ERROR_BODIES",
    "PROTOCOLS",
    "admin",
    "batches",
    "chat",
    "health",
    "jobs",
    "native",
    "oip",
    "openai",
    "openapi",
    "rerank",
]
