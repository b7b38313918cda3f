"""OpenAI-compatible routes: `POST /v1/embeddings`.

`input` a string or a list of strings, `encoding_format` float|base64, `model` optional (the
served name or `default`), `dimensions` only the model's own; our extension, as in TEI:
`truncate: true` cuts inputs over the limit (OpenAI itself refuses them).
"""

from __future__ import annotations

import base64
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
    Choice,
    Field,
    JsonSchema,
    Limits,
    Object,
    PositiveInt,
    String,
    Texts,
)
from sidecar.errors import InvalidInputError
from sidecar.models import Embeddings, TextInputs

EMBEDDINGS = Object(
    {
        "input": Field(Texts(objects=False), required=True),
        "model": Field(String(), nullable=True, description="the served name or 'default'"),
        "encoding_format": Field(Choice("float", "base64"), default="float"),
        "dimensions": Field(PositiveInt(), nullable=True, description="only the model's own"),
        "user": Field(String(), nullable=True, description="accepted and ignored"),
        "truncate": Field(Boolean(), default=False, description="cut inputs over the limit"),
    }
)


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A parsed `/v1/embeddings` body."""

    texts: list[str]
    model: str | None
    encoding_format: str
    dimensions: int | None
    truncate: bool = False

    @classmethod
    def parse(cls, data: dict[str, Any], *, limits: Limits) -> EmbeddingsRequest:
        body = EMBEDDINGS.parse(data, limits)
        return cls(
            body["input"],
            body["model"],
            body["encoding_format"],
            body["dimensions"],
            body["truncate"],
        )


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/embeddings", embeddings),
        web.post("/v1/models/{model}/versions/{version}/embeddings", embeddings),
    ]


def openapi_paths(limits: Limits) -> dict[str, dict[str, Any]]:
    path_item = routed(
        {
            "post": operation(
                "OpenAI-compatible embeddings",
                limits=limits,
                body=EMBEDDINGS,
                ok=json_content(_EMBEDDINGS_RESPONSE),
                errors=[404],
                tag="openai",
            )
        }
    )
    return {
        "/v1/embeddings": path_item,
        "/v1/models/{model}/versions/{version}/embeddings": pinned(path_item),
    }


@wire.inference
async def embeddings(request: web.Request) -> web.StreamResponse:
    """`POST /v1/embeddings`."""
    data = await wire.read_json(request)
    return wire.json_response(await respond(wire.RequestCaller(request), data))


async def respond(caller: wire.Caller, data: dict[str, Any]) -> dict[str, Any]:
    """The response body of an embeddings request body, for a request or a job's item."""
    parsed = EmbeddingsRequest.parse(data, limits=Limits.of(caller.service.settings))
    served = caller.model(parsed.model, "embed")
    card = served.engine.card
    if parsed.dimensions is not None and parsed.dimensions != card.embedding_dim:
        raise InvalidInputError(
            f"'dimensions' must be {card.embedding_dim} for model '{served.name}'"
        )
    inference = await caller.infer(served, TextInputs(parsed.texts, truncate=parsed.truncate))
    assert isinstance(inference.result, Embeddings)
    data_out: list[dict[str, Any]] = [
        {
            "object": "embedding",
            "index": index,
            "embedding": (
                base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
                if parsed.encoding_format == "base64"
                else row
            ),
        }
        for index, row in enumerate(inference.result.vectors)
    ]
    tokens = inference.num_tokens
    return {
        "object": "list",
        "data": data_out,
        "model": served.name,
        "model_version": served.version,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


_EMBEDDINGS_RESPONSE: JsonSchema = record(
    object={"const": "list"},
    data=array(
        record(
            object={"const": "embedding"},
            index=INTEGER,
            embedding={
                "anyOf": [array(NUMBER), {"type": "string", "contentEncoding": "base64"}],
                "description": "floats, or little-endian float32 bytes in base64",
            },
        )
    ),
    model=STRING,
    model_version=STRING,
    usage=record(prompt_tokens=INTEGER, total_tokens=INTEGER),
)
