"""The native API: `/v1/predict`, `/v1/models`, `/v1/info`.

POST /v1/predict, /v1/models/{model}/predict
    {"inputs": "text" | ["text", ...] | [{"text": "..."}, ...],
     "parameters": {"truncate": false, "normalize": true}}
    -> {"id", "model", "model_version", "created", "results", "usage", "latency_ms"}
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sidecar import __version__
from sidecar.api import wire
from sidecar.api.keys import ARRIVED_AT, SERVICE, TIMELINE
from sidecar.errors import InvalidInputError
from sidecar.models import Classifications, Embeddings, Result, TextInputs

if TYPE_CHECKING:
    from sidecar.serving import ServedModel, Service

_PREDICT_KEYS = {"inputs", "parameters"}
_PARAMETERS = {"truncate", "normalize"}


@dataclass(frozen=True)
class PredictRequest:
    """A parsed predict body."""

    texts: list[str]
    truncate: bool = False
    normalize: bool = True

    @classmethod
    def parse(cls, data: dict[str, Any], *, max_inputs: int) -> PredictRequest:
        """Check a predict body: `{"inputs": [...], "parameters": {...}}`."""
        wire.refuse_unknown(data, _PREDICT_KEYS, "field")
        texts = wire.texts(wire.required(data, "inputs"), "inputs", max_inputs, allow_objects=True)
        parameters = data.get("parameters", {})
        if not isinstance(parameters, dict):  # [], "", 0, false and null alike
            raise InvalidInputError("'parameters' must be an object")
        wire.refuse_unknown(parameters, _PARAMETERS, "parameter")
        return cls(
            texts,
            truncate=wire.boolean(parameters, "truncate", False, name="parameters.truncate"),
            normalize=wire.boolean(parameters, "normalize", True, name="parameters.normalize"),
        )


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/predict", predict),
        web.post("/v1/models/{model}/predict", predict),
        web.get("/v1/models", list_models),
        web.get("/v1/models/{model}", get_model),
        web.get("/v1/info", info),
    ]


@wire.inference
async def predict(request: web.Request) -> web.StreamResponse:
    """`POST /v1/predict` and `POST /v1/models/{model}/predict`."""
    service = request.app[SERVICE]
    served = wire.model_for(request, request.match_info.get("model"), "embed", "classify")
    data = await wire.read_json(request)
    parsed = PredictRequest.parse(data, max_inputs=service.settings.max_client_batch)
    inference = await served.engine.infer(
        TextInputs(parsed.texts, truncate=parsed.truncate, normalize=parsed.normalize),
        deadline=wire.deadline(request),
    )
    tokens = inference.num_tokens
    return wire.json_response(
        {
            "id": "pred_" + uuid.uuid4().hex[:24],
            "model": served.name,
            "model_version": served.version,
            "created": int(time.time()),
            "results": _results(inference.result),
            "usage": {"input_tokens": tokens, "total_tokens": tokens},
            "latency_ms": round((time.monotonic() - request[ARRIVED_AT]) * 1000.0, 3),
        }
    )


def _results(result: Result) -> list[dict[str, Any]]:
    if isinstance(result, Embeddings):
        return [{"embedding": row} for row in result.vectors]
    if isinstance(result, Classifications):
        return [{"label": c.label, "score": c.score, "scores": c.scores} for c in result.items]
    raise TypeError(f"no predict results for {type(result).__name__}")


async def list_models(request: web.Request) -> web.StreamResponse:
    """`GET /v1/models`."""
    service = request.app[SERVICE]
    service.check_ready()
    return wire.json_response(
        {"object": "list", "data": [model_card(service, service.model(None))]}
    )


async def get_model(request: web.Request) -> web.StreamResponse:
    """`GET /v1/models/{model}`."""
    service = request.app[SERVICE]
    service.check_ready()
    return wire.json_response(model_card(service, service.model(request.match_info["model"])))


async def info(request: web.Request) -> web.StreamResponse:
    """`GET /v1/info`: effective settings, build version, load figures."""
    service = request.app[SERVICE]
    timeline = request.app[TIMELINE]
    served = service.served
    card = served.engine.card if served else None
    return wire.json_response(
        {
            "version": __version__,
            "phase": service.phase.value,
            "model": served.name if served else None,
            "model_version": served.version if served else None,
            "device": card.device if card else None,
            "dtype": card.dtype if card else None,
            "torch": service.torch_version,
            "settings": service.settings.public(),
            "load": served.report.public() if served else None,
            "batching": _batching(served),
            "startup_s": {
                "phases": timeline.phases_s(),
                "to_ready": timeline.since_start_s("ready"),
            },
        }
    )


def model_card(service: Service, served: ServedModel) -> dict[str, Any]:
    """What `/v1/models/{model}` says of a served model."""
    card = served.engine.card
    settings = service.settings
    bounds = served.engine.batcher.config  # effective: some bounds default by device
    body: dict[str, Any] = {
        "id": served.name,
        "object": "model",
        "version": served.version,
        "task": card.task,
        "architecture": card.architecture,
        "created": served.created,
        "owned_by": "sidecar",
        "device": card.device,
        "dtype": card.dtype,
        "max_input_tokens": card.max_input_tokens,
        "input_schema": _INPUT_SCHEMAS[card.task] | {"max_inputs": settings.max_client_batch},
        "batching": {
            "window_ms": settings.batch_window_ms,
            "min_size": bounds.min_size,
            "max_size": bounds.max_size,
            "max_tokens": bounds.max_tokens,
            "adaptive": bounds.adaptive,
            "queue_max": bounds.queue_max,
        },
    }
    if card.task == "embed":
        body["embedding_dimension"] = card.embedding_dim
        body["pooling"] = {"modes": list(card.pooling or ()), "normalize": card.snapshot_normalizes}
        body["output_schema"] = {"results": [{"embedding": f"[float] x {card.embedding_dim}"}]}
    elif card.task == "classify":
        body["labels"] = list(card.labels or ())
        body["output_schema"] = {
            "results": [{"label": "string", "score": "float", "scores": {"label": "float"}}]
        }
    elif card.task == "rerank":
        body["output_schema"] = {
            "results": [{"index": "integer", "relevance_score": "float", "document?": "object"}]
        }
    return body


_TEXT_INPUTS = {
    "inputs": "string | [string] | [{text: string}]",
    "parameters": {"truncate": "boolean (false)", "normalize": "boolean (true)"},
}
_INPUT_SCHEMAS: dict[str, dict[str, Any]] = {
    "embed": _TEXT_INPUTS,
    "classify": _TEXT_INPUTS,
    "rerank": {
        "route": "/v1/rerank",
        "query": "string",
        "documents": "[string] | [{text: string}]",
        "top_n": "integer",
        "return_documents": "boolean (false)",
        "raw_scores": "boolean (false)",
        "truncate": "boolean (false)",
    },
}


def _batching(served: ServedModel | None) -> dict[str, Any] | None:
    if served is None:
        return None
    overhead = served.engine.batcher.batch_overhead_tokens
    # null until enough batches of different sizes have run, or when tokens cost nothing
    # measurable (batches then fill to the bounds)
    if overhead is None or not math.isfinite(overhead):
        return {"batch_overhead_tokens": None}
    return {"batch_overhead_tokens": round(overhead, 1)}
