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
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sidecar.api import wire
from sidecar.api.keys import SERVICE
from sidecar.api.openapi import INTEGER, NUMBER, STRING, array, json_content, operation, record
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

if TYPE_CHECKING:
    from sidecar.serving import Service

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
    return [web.post("/v1/rerank", rerank)]


def openapi_paths(limits: Limits) -> dict[str, dict[str, Any]]:
    return {
        "/v1/rerank": {
            "post": operation(
                "Score documents against a query, best first",
                limits=limits,
                body=RERANK,
                ok=json_content(_RERANK_RESPONSE),
                errors=[404],
                tag="rerank",
            )
        }
    }


@wire.inference
async def rerank(request: web.Request) -> web.StreamResponse:
    """`POST /v1/rerank`."""
    service = request.app[SERVICE]
    data = await wire.read_json(request)
    return wire.json_response(await respond(service, data, deadline=wire.deadline(request)))


async def respond(
    service: Service, data: dict[str, Any], *, deadline: float | None, bulk: bool = False
) -> dict[str, Any]:
    """The response body of a rerank request body (`bulk`: a job's item)."""
    parsed = RerankRequest.parse(data, limits=Limits.of(service.settings))
    served = wire.served_model(service, parsed.model, "/v1/rerank", "rerank")
    inference = await served.engine.infer(
        PairInputs(
            parsed.query, parsed.documents, truncate=parsed.truncate, raw_scores=parsed.raw_scores
        ),
        deadline=deadline,
        bulk=bulk,
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
    id=STRING, model=STRING, results=array(_RESULT), usage=record(total_tokens=INTEGER)
)
