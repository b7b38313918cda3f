"""The rerank API that Cohere, Jina and vLLM share: `POST /v1/rerank`.

    {"model"?, "query": "...", "documents": ["...", {"text": "..."}], "top_n"?,
     "return_documents": false, "raw_scores": false, "truncate": false}
    -> {"id", "model", "results": [{"index", "relevance_score", "document"?: {"text"}}], "usage"}

Results are sorted by score, best first, cut to `top_n`. `raw_scores` (our extension) returns the
model's logits instead of its activation of them; `truncate` cuts pairs over the token limit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sidecar.api import wire
from sidecar.api.openapi import (
    INTEGER,
    NUMBER,
    STRING,
    array,
    json_content,
    operation,
    pinned,
    record,
    routed,
)
from sidecar.api.schema import (
    Boolean,
    Field,
    JsonSchema,
    Limits,
    Object,
    PositiveInt,
    String,
    Texts,
)
from sidecar.models import PairInputs, Scores

RERANK = Object(
    {
        "model": Field(String(), nullable=True, description="the served name or 'default'"),
        "query": Field(String(), required=True),
        "documents": Field(Texts(objects=True, single=False), required=True),
        "top_n": Field(PositiveInt(), nullable=True, description="the best this many"),
        "return_documents": Field(Boolean(), default=False),
        "raw_scores": Field(Boolean(), default=False, description="logits, not activations"),
        "truncate": Field(Boolean(), default=False, description="cut pairs over the limit"),
    }
)


@dataclass(frozen=True)
class RerankRequest:
    """A parsed rerank body."""

    query: str
    documents: list[str]
    model: str | None
    top_n: int | None
    return_documents: bool
    raw_scores: bool
    truncate: bool

    @classmethod
    def parse(cls, data: dict[str, Any], *, limits: Limits) -> RerankRequest:
        body = RERANK.parse(data, limits)
        return cls(
            body["query"],
            body["documents"],
            body["model"],
            body["top_n"],
            body["return_documents"],
            body["raw_scores"],
            body["truncate"],
        )


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/rerank", rerank),
        web.post("/v1/models/{model}/versions/{version}/rerank", rerank),
    ]


def openapi_paths(limits: Limits) -> dict[str, dict[str, Any]]:
    path_item = routed(
        {
            "post": operation(
                "Score documents against a query, best first",
                limits=limits,
                body=RERANK,
                ok=json_content(_RERANK_RESPONSE),
                errors=[404],
                tag="rerank",
            )
        }
    )
    return {
        "/v1/rerank": path_item,
        "/v1/models/{model}/versions/{version}/rerank": pinned(path_item),
    }


@wire.inference
async def rerank(request: web.Request) -> web.StreamResponse:
    """`POST /v1/rerank`."""
    data = await wire.read_json(request)
    return wire.json_response(await respond(wire.RequestCaller(request), data))


async def respond(caller: wire.Caller, data: dict[str, Any]) -> dict[str, Any]:
    """The response body of a rerank request body, for a request or a job's item."""
    parsed = RerankRequest.parse(data, limits=Limits.of(caller.service.settings))
    served = caller.model(parsed.model, "rerank")
    inference = await caller.infer(
        served,
        PairInputs(
            parsed.query, parsed.documents, truncate=parsed.truncate, raw_scores=parsed.raw_scores
        ),
    )
    assert isinstance(inference.result, Scores)
    scores = inference.result.values
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[: parsed.top_n]
    results: list[dict[str, Any]] = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": float(scores[index])}
        if parsed.return_documents:
            result["document"] = {"text": parsed.documents[index]}
        results.append(result)
    return {
        "id": "rerank_" + uuid.uuid4().hex[:24],
        "model": served.name,
        "model_version": served.version,
        "results": results,
        "usage": {"total_tokens": inference.num_tokens},
    }


_RESULT: JsonSchema = {
    "type": "object",
    "properties": {
        "index": INTEGER,
        "relevance_score": NUMBER,
        "document": record(text=STRING),
    },
    "required": ["index", "relevance_score"],
    "additionalProperties": False,
    "description": "document only when return_documents is true",
}
_RERANK_RESPONSE: JsonSchema = record(
    id=STRING,
    model=STRING,
    model_version=STRING,
    results=array(_RESULT),
    usage=record(total_tokens=INTEGER),
)
