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
from sidecar.api import openapi, wire
from sidecar.api.keys import ARRIVED_AT, SERVICE, TIMELINE
from sidecar.api.openapi import (
    BOOLEAN,
    INTEGER,
    NUMBER,
    STRING,
    array,
    json_content,
    model_parameter,
    nullable,
    pinned,
    record,
    routed,
)
from sidecar.api.schema import Boolean, Field, JsonSchema, Limits, Object, Texts
from sidecar.models import Classifications, Embeddings, Result, TextInputs

if TYPE_CHECKING:
    from sidecar.serving import ServedModel, Service

PARAMETERS = Object(
    {
        "truncate": Field(Boolean(), default=False, description="cut inputs over the token limit"),
        "normalize": Field(Boolean(), default=True, description="unit-length embeddings"),
    },
    member="parameter",
)
PREDICT = Object(
    {
        "inputs": Field(Texts(objects=True), required=True),
        "parameters": Field(PARAMETERS, default={}),
    }
)


@dataclass(frozen=True)
class PredictRequest:
    """A parsed predict body."""

    texts: list[str]
    truncate: bool = False
    normalize: bool = True

    @classmethod
    def parse(cls, data: dict[str, Any], *, limits: Limits) -> PredictRequest:
        """Check a predict body: `{"inputs": [...], "parameters": {...}}`."""
        body = PREDICT.parse(data, limits)
        parameters = body["parameters"]
        return cls(
            body["inputs"], truncate=parameters["truncate"], normalize=parameters["normalize"]
        )


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/predict", predict),
        web.post("/v1/models/{model}/predict", predict),
        web.post("/v1/models/{model}/versions/{version}/predict", predict),
        web.get("/v1/models", list_models),
        web.get("/v1/models/{model}", get_model),
        web.get("/v1/models/{model}/versions/{version}", get_model),
        web.get("/v1/info", info),
    ]


def openapi_paths(limits: Limits) -> dict[str, dict[str, Any]]:
    def predict_op(*errors: int) -> dict[str, Any]:
        return openapi.operation(
            "Embed or classify texts with the served model",
            limits=limits,
            body=PREDICT,
            ok=json_content(_PREDICT_RESPONSE),
            errors=errors,
            parameters=[model_parameter()] if 404 in errors else [],
            tag="native",
        )

    model_card = json_content(_MODEL_CARD)
    return {
        "/v1/predict": routed({"post": predict_op()}),
        "/v1/models/{model}/predict": routed({"post": predict_op(404)}),
        "/v1/models/{model}/versions/{version}/predict": pinned(routed({"post": predict_op(404)})),
        "/v1/models": {
            "get": openapi.operation(
                "The served model",
                limits=limits,
                ok=json_content(record(object={"const": "list"}, data=array(_MODEL_CARD))),
                errors=[503],
                tag="native",
            )
        },
        "/v1/models/{model}": {
            "get": openapi.operation(
                "A served model's card",
                limits=limits,
                ok=model_card,
                errors=[404, 503],
                parameters=[model_parameter()],
                tag="native",
            )
        },
        "/v1/models/{model}/versions/{version}": pinned(
            {
                "get": openapi.operation(
                    "A version's card",
                    limits=limits,
                    ok=model_card,
                    errors=[404, 503],
                    parameters=[model_parameter()],
                    tag="native",
                )
            }
        ),
        "/v1/info": {
            "get": openapi.operation(
                "Effective settings, build version, load figures",
                limits=limits,
                ok=json_content(_INFO),
                tag="native",
            )
        },
    }


@wire.inference
async def predict(request: web.Request) -> web.StreamResponse:
    """`POST /v1/predict` and `POST /v1/models/{model}/predict`."""
    caller = wire.RequestCaller(request)
    served = caller.model(None, "embed", "classify")  # before the body: a 404 reads nothing
    data = await wire.read_json(request)
    return wire.json_response(await respond(caller, data, served=served, since=request[ARRIVED_AT]))


async def respond(
    caller: wire.Caller,
    data: dict[str, Any],
    *,
    served: ServedModel | None = None,
    since: float,
) -> dict[str, Any]:
    """The response body of a predict request body, for a request or a job's item (`served`:
    the version already chosen, else the caller's; `since`: the monotonic arrival)."""
    if served is None:
        served = caller.model(None, "embed", "classify")
    parsed = PredictRequest.parse(data, limits=Limits.of(caller.service.settings))
    inference = await caller.infer(
        served, TextInputs(parsed.texts, truncate=parsed.truncate, normalize=parsed.normalize)
    )
    tokens = inference.num_tokens
    return {
        "id": "pred_" + uuid.uuid4().hex[:24],
        "model": served.name,
        "model_version": served.version,
        "created": int(time.time()),
        "results": _results(inference.result),
        "usage": {"input_tokens": tokens, "total_tokens": tokens},
        "latency_ms": round((time.monotonic() - since) * 1000.0, 3),
    }


def _results(result: Result) -> list[dict[str, Any]]:
    if isinstance(result, Embeddings):
        return [{"embedding": row} for row in result.vectors]
    if isinstance(result, Classifications):
        return [{"label": c.label, "score": c.score, "scores": c.scores} for c in result.items]
    raise TypeError(f"no predict results for {type(result).__name__}")


async def list_models(request: web.Request) -> web.StreamResponse:
    """`GET /v1/models`: the model (its stable version's card), its versions and states."""
    service = request.app[SERVICE]
    service.check_ready()
    card = model_card(service, service.model(None))
    return wire.json_response({"object": "list", "data": [card | service.versions()]})


async def get_model(request: web.Request) -> web.StreamResponse:
    """`GET /v1/models/{model}[/versions/{version}]`: the card of the stable or named version."""
    service = request.app[SERVICE]
    service.check_ready()
    name, version = request.match_info["model"], request.match_info.get("version")
    served = service.model(name) if version is None else service.version(name, version)
    return wire.json_response(model_card(service, served) | service.versions())


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
    elif card.task == "generate":
        body["context_length"] = card.max_input_tokens  # prompt and output together
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
    "generate": {"routes": ["/v1/completions", "/v1/chat/completions"]},
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


_RESULT: JsonSchema = {
    "anyOf": [
        record(embedding=array(NUMBER)),
        record(
            label=STRING, score=NUMBER, scores={"type": "object", "additionalProperties": NUMBER}
        ),
    ],
    "description": "embed: {embedding}; classify: {label, score, scores}; in input order",
}
_PREDICT_RESPONSE = record(
    id=STRING,
    model=STRING,
    model_version=STRING,
    created=INTEGER,
    results=array(_RESULT),
    usage=record(input_tokens=INTEGER, total_tokens=INTEGER),
    latency_ms=NUMBER,
)
_MODEL_CARD: JsonSchema = {
    **record(
        id=STRING,
        object={"const": "model"},
        version=STRING,
        task=STRING,
        architecture=STRING,
        created=INTEGER,
        owned_by=STRING,
        device=STRING,
        dtype=STRING,
        max_input_tokens=INTEGER,
        input_schema={"type": "object"},
        batching=record(
            window_ms=NUMBER,
            min_size=INTEGER,
            max_size=INTEGER,
            max_tokens=INTEGER,
            adaptive=BOOLEAN,
            queue_max=INTEGER,
        ),
    ),
    "additionalProperties": {
        "description": "the task's own: embedding_dimension, pooling, labels, output_schema"
    },
}
_INFO = record(
    version=STRING,
    phase=STRING,
    model=nullable(STRING),
    model_version=nullable(STRING),
    device=nullable(STRING),
    dtype=nullable(STRING),
    torch=nullable(STRING),
    settings={"type": "object", "description": "the effective settings, secrets redacted"},
    load=nullable({"type": "object"}),
    batching=nullable(record(batch_overhead_tokens=nullable(NUMBER))),
    startup_s=record(
        phases={"type": "object", "additionalProperties": NUMBER},
        to_ready=nullable(NUMBER),
    ),
)
