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
from sidecar.api.keys import SERVICE
from sidecar.errors import InvalidInputError
from sidecar.models import Embeddings, TextInputs

_EMBEDDINGS_KEYS = {"input", "model", "encoding_format", "dimensions", "user", "truncate"}


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A parsed `/v1/embeddings` body."""

    texts: list[str]
    model: str | None
    encoding_format: str
    dimensions: int | None
    truncate: bool = False

    @classmethod
    def parse(cls, data: dict[str, Any], *, max_inputs: int) -> EmbeddingsRequest:
        wire.refuse_unknown(data, _EMBEDDINGS_KEYS, "field")
        texts = wire.texts(wire.required(data, "input"), "input", max_inputs, allow_objects=False)
        model = wire.string(data, "model")
        encoding = data.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise InvalidInputError("'encoding_format' must be 'float' or 'base64'")
        return cls(
            texts,
            model,
            encoding,
            wire.positive_int(data, "dimensions"),
            wire.boolean(data, "truncate", False),
        )


def routes() -> list[web.RouteDef]:
    return [web.post("/v1/embeddings", embeddings)]


@wire.inference
async def embeddings(request: web.Request) -> web.StreamResponse:
    """`POST /v1/embeddings`."""
    service = request.app[SERVICE]
    data = await wire.read_json(request)
    parsed = EmbeddingsRequest.parse(data, max_inputs=service.settings.max_client_batch)
    served = wire.model_for(request, parsed.model, "embed")
    card = served.engine.card
    if parsed.dimensions is not None and parsed.dimensions != card.embedding_dim:
        raise InvalidInputError(
            f"'dimensions' must be {card.embedding_dim} for model '{served.name}'"
        )
    inference = await served.engine.infer(
        TextInputs(parsed.texts, truncate=parsed.truncate), deadline=wire.deadline(request)
    )
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
    return wire.json_response(
        {
            "object": "list",
            "data": data_out,
            "model": served.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
