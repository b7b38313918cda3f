"""HTTP handlers: inference, model metadata, health and metrics."""

from __future__ import annotations

import base64
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from sidecar.errors import (
    InvalidInputError,
    ModelNotFoundError,
    PayloadTooLargeError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedTaskError,
)
from sidecar.keys import ARRIVED_AT, RUNTIME
from sidecar.metrics import CONTENT_TYPE
from sidecar.runtime import Runtime
from sidecar.schemas import parse_embeddings, parse_predict

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEFAULT_ALIAS = "default"


def json_response(payload: Any, status: int = 200) -> web.Response:
    """Serialise with orjson, numpy arrays included."""
    return web.Response(
        body=orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
    )


def inference(handler: Handler) -> Handler:
    """Wrap an inference route: bearer token, readiness, in-flight tracking for the drain."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        runtime = request.app[RUNTIME]
        if runtime.auth_token is not None:
            _check_token(request, runtime.auth_token)
        runtime.require_engine()
        runtime.enter()
        try:
            return await handler(request)
        finally:
            runtime.leave()

    return wrapped


@inference
async def predict(request: web.Request) -> web.StreamResponse:
    """`POST /v1/predict` and `POST /v1/models/{model}/predict`."""
    runtime = request.app[RUNTIME]
    _check_model(runtime, request.match_info.get("model", DEFAULT_ALIAS))
    settings = runtime.settings
    body = await _read_body(request, settings.max_body_bytes)
    parsed = parse_predict(body, max_inputs=settings.max_client_batch)
    engine = runtime.require_engine()
    prediction = await engine.infer(
        parsed.texts, truncate=parsed.truncate, deadline=_deadline(request, runtime)
    )
    results: list[dict[str, Any]]
    if engine.model.task == "embed":
        rows = _normalized(prediction.rows) if parsed.normalize else prediction.rows
        results = [{"embedding": row} for row in rows]
    else:
        labels = engine.model.labels or ()
        results = [_classification(row, labels) for row in prediction.rows]
    return json_response(
        {
            "id": "pred_" + uuid.uuid4().hex[:24],
            "model": runtime.model_name,
            "model_version": runtime.model_version,
            "created": int(time.time()),
            "results": results,
            "usage": {"input_tokens": prediction.num_tokens, "total_tokens": prediction.num_tokens},
            "latency_ms": round((time.monotonic() - request[ARRIVED_AT]) * 1000.0, 3),
        }
    )


@inference
async def embeddings(request: web.Request) -> web.StreamResponse:
    """`POST /v1/embeddings`, OpenAI-compatible."""
    runtime = request.app[RUNTIME]
    settings = runtime.settings
    body = await _read_body(request, settings.max_body_bytes)
    parsed = parse_embeddings(body, max_inputs=settings.max_client_batch)
    _check_model(runtime, parsed.model or DEFAULT_ALIAS)
    engine = runtime.require_engine()
    model = engine.model
    if model.task != "embed":
        raise UnsupportedTaskError(f"model '{runtime.model_name}' does not produce embeddings")
    if parsed.dimensions is not None and parsed.dimensions != model.embedding_dim:
        raise InvalidInputError(
            f"'dimensions' must be {model.embedding_dim} for model '{runtime.model_name}'"
        )
    prediction = await engine.infer(
        parsed.texts, truncate=parsed.truncate, deadline=_deadline(request, runtime)
    )
    rows = _normalized(prediction.rows)
    data: list[dict[str, Any]] = [
        {
            "object": "embedding",
            "index": index,
            "embedding": (
                base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
                if parsed.encoding_format == "base64"
                else row
            ),
        }
        for index, row in enumerate(rows)
    ]
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": runtime.model_name,
            "usage": {
                "prompt_tokens": prediction.num_tokens,
                "total_tokens": prediction.num_tokens,
            },
        }
    )


async def list_models(request: web.Request) -> web.StreamResponse:
    """`GET /v1/models`."""
    runtime = request.app[RUNTIME]
    return json_response({"object": "list", "data": [runtime.model_card()]})


async def get_model(request: web.Request) -> web.StreamResponse:
    """`GET /v1/models/{model}`."""
    runtime = request.app[RUNTIME]
    card = runtime.model_card()
    _check_model(runtime, request.match_info["model"])
    return json_response(card)


async def info(request: web.Request) -> web.StreamResponse:
    """`GET /v1/info`: effective settings, build version, load figures."""
    return json_response(request.app[RUNTIME].info())


async def livez(request: web.Request) -> web.StreamResponse:
    """Process and device worker alive; fails after a fatal device error."""
    if request.app[RUNTIME].fatal:
        return json_response({"status": "failed"}, status=503)
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Model loaded, warmed and not draining."""
    request.app[RUNTIME].require_engine()
    return json_response({"status": "ready"})


async def startupz(request: web.Request) -> web.StreamResponse:
    """Start-up finished (stays true while draining)."""
    if not request.app[RUNTIME].started:
        raise UnavailableError("the model is loading", reason="loading", retry_after_s=5)
    return json_response({"status": "started"})


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus exposition."""
    body = request.app[RUNTIME].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _check_token(request: web.Request, token: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise UnauthorizedError("a valid 'Authorization: Bearer <token>' header is required")


def _check_model(runtime: Runtime, name: str) -> None:
    if name not in (DEFAULT_ALIAS, runtime.model_name):
        raise ModelNotFoundError(
            f"model '{name[:128]}' is not served here; this server serves '{runtime.model_name}'"
        )


async def _read_body(request: web.Request, max_bytes: int) -> bytes:
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLargeError(f"the body has {length} bytes; at most {max_bytes} are allowed")
    return await request.read()


def _deadline(request: web.Request, runtime: Runtime) -> float:
    timeout_ms = runtime.settings.request_timeout_ms
    header = request.headers.get("X-Request-Timeout-Ms")
    if header is not None:
        try:
            asked = int(header)
        except ValueError:
            asked = 0
        if asked < 1:
            raise InvalidInputError("X-Request-Timeout-Ms must be a positive integer")
        timeout_ms = min(timeout_ms, asked)
    return float(request[ARRIVED_AT] + timeout_ms / 1000.0)


def _normalized(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    normalized: np.ndarray = rows / np.maximum(norms, 1e-12)
    return normalized


def _classification(probabilities: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    best = int(np.argmax(probabilities))
    return {
        "label": labels[best],
        "score": float(probabilities[best]),
        "scores": {label: float(p) for label, p in zip(labels, probabilities, strict=True)},
    }
