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
from sidecar.api.keys import SERVICE
from sidecar.errors import InvalidInputError
from sidecar.models import PairInputs, Scores

_RERANK_KEYS = {
    "model",
    "query",
    "documents",
    "top_n",
    "return_documents",
    "raw_scores",
    "truncate",
}


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
    def parse(cls, data: dict[str, Any], *, max_inputs: int) -> RerankRequest:
        wire.refuse_unknown(data, _RERANK_KEYS, "field")
        query = wire.required(data, "query")
        if not isinstance(query, str):
            raise InvalidInputError("'query' must be a string")
        documents = wire.required(data, "documents")
        if isinstance(documents, str):
            raise InvalidInputError("'documents' must be a list of strings or {\"text\": string}")
        return cls(
            query,
            wire.texts(documents, "documents", max_inputs, allow_objects=True),
            wire.string(data, "model"),
            wire.positive_int(data, "top_n"),
            wire.boolean(data, "return_documents", False),
            wire.boolean(data, "raw_scores", False),
            wire.boolean(data, "truncate", False),
        )


def routes() -> list[web.RouteDef]:
    return [web.post("/v1/rerank", rerank)]


@wire.inference
async def rerank(request: web.Request) -> web.StreamResponse:
    """`POST /v1/rerank`."""
    service = request.app[SERVICE]
    data = await wire.read_json(request)
    parsed = RerankRequest.parse(data, max_inputs=service.settings.max_client_batch)
    served = wire.model_for(request, parsed.model, "rerank")
    inference = await served.engine.infer(
        PairInputs(
            parsed.query, parsed.documents, truncate=parsed.truncate, raw_scores=parsed.raw_scores
        ),
        deadline=wire.deadline(request),
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
    return wire.json_response(
        {
            "id": "rerank_" + uuid.uuid4().hex[:24],
            "model": served.name,
            "results": results,
            "usage": {"total_tokens": inference.num_tokens},
        }
    )
