"""Open Inference Protocol v2 (REST), as Triton, KServe and MLServer clients speak it.

    GET  /v2                                          server metadata
    GET  /v2/health/live, /v2/health/ready            {"live": true}, {"ready": true}
    GET  /v2/models/{model}[/versions/{version}]      name, versions, platform, inputs, outputs
    GET  /v2/models/{model}[/versions/{version}]/ready
    POST /v2/models/{model}[/versions/{version}]/infer

A model is named by its served name or `default`; it has one version, the one `/v1/models`
shows, and any other version is 404. Text models take a BYTES input `text` (one element per
item; shape [N] or [N, 1]) and give `embedding` (FP32 [N, D]) or `probabilities` (FP32 [N, L],
labels in the model card's order); a reranker takes a BYTES `query` (one element) and `text`
(the documents) and gives `scores` (FP32 [N]). A tensor model (an ONNX graph) takes and gives
the graph's own tensors. Request parameters `truncate`, `normalize` and `raw_scores` are those of
the native and rerank routes; other parameters are ignored, as the protocol allows.

Success is always 200. Errors are `{"error": "<message>"}` (`error_body`), with the statuses of
the one error table (`sidecar.middleware`); tensors on the wire are `sidecar.api.oip_tensors`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from aiohttp import web

from sidecar import __version__
from sidecar.api import oip_tensors, oip_types, openapi, wire
from sidecar.api.keys import SERVICE
from sidecar.api.oip_tensors import Array
from sidecar.api.oip_types import InferRequest, Signature
from sidecar.api.openapi import json_content, model_parameter
from sidecar.api.schema import JsonSchema, Limits
from sidecar.errors import InvalidInputError
from sidecar.models import (
    Classifications,
    Embeddings,
    Inputs,
    ModelCard,
    PairInputs,
    Result,
    Scores,
    TensorInputs,
    Tensors,
    TextInputs,
)

if TYPE_CHECKING:
    from sidecar.serving import ServedModel

PATH_PREFIX = "/v2"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data",)
# Bodies larger than this are decoded off the event loop.
_DECODE_OFF_LOOP_BYTES = 256 << 10
_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "torch": "pytorch"}


def error_body(code: str, message: str, request_id: str) -> dict[str, Any]:
    """The protocol's error shape: the message alone (status and X-Request-Id say the rest)."""
    return {"error": message}


def routes() -> list[web.RouteDef]:
    model = "/v2/models/{model}"
    version = "/v2/models/{model}/versions/{version}"
    return [
        web.get("/v2", server_metadata),
        web.get("/v2/health/live", server_live),
        web.get("/v2/health/ready", server_ready),
        web.get(model, model_metadata),
        web.get(version, model_metadata),
        web.get(f"{model}/ready", model_ready),
        web.get(f"{version}/ready", model_ready),
        web.post(f"{model}/infer", infer),
        web.post(f"{version}/infer", infer),
    ]


def openapi_paths(limits: Limits) -> dict[str, dict[str, Any]]:
    def op(summary: str, ok: JsonSchema, errors: tuple[int, ...], **kwargs: Any) -> Any:
        return openapi.operation(
            summary,
            limits=limits,
            ok=json_content(ok),
            errors=errors,
            tag="oip",
            error=oip_types.ERROR,
            **kwargs,
        )

    live, ready = {"const": {"live": True}}, {"const": {"ready": True}}
    paths: dict[str, dict[str, Any]] = {
        "/v2": {"get": op("Server metadata", oip_types.SERVER, ())},
        "/v2/health/live": {"get": op("The server is live", live, (503,))},
        "/v2/health/ready": {"get": op("The server is ready", ready, (503,))},
    }
    model = model_parameter()
    for path, parameters in (
        ("/v2/models/{model}", [model]),
        ("/v2/models/{model}/versions/{version}", [model, oip_types.VERSION_PARAMETER]),
    ):
        found = (404, 503)
        paths[path] = {"get": op("Model metadata", oip_types.MODEL, found, parameters=parameters)}
        paths[f"{path}/ready"] = {
            "get": op("The model is ready", oip_types.READY, found, parameters=parameters)
        }
        statuses = (404, *openapi.BODY_STATUSES)
        infer_op = op("Inference", oip_types.INFER_RESPONSE, statuses, parameters=parameters)
        infer_op["requestBody"] = {
            "required": True,
            "content": {
                **json_content(oip_types.INFER_REQUEST),
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": f"the JSON request, its length in {HEADER_LENGTH}, "
                        "then each binary input's bytes in input order (binary_data_size each)",
                    }
                },
            },
        }
        infer_op["responses"]["200"]["content"]["application/octet-stream"] = {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": f"when an output is asked for as binary data: the JSON response, "
                f"its length in {HEADER_LENGTH}, then each binary output's bytes in order",
            }
        }
        paths[f"{path}/infer"] = openapi.routed({"post": infer_op})
    return paths


def _served(request: web.Request) -> ServedModel:
    """The model (and version) the path names, for its metadata.

    Raises:
        ModelNotFoundError: another model, or a version it does not have (VersionNotFoundError).
        NotReadyError: nothing is loaded yet; VersionNotReadyError: the version is not ready.
    """
    service = request.app[SERVICE]
    name, version = request.match_info["model"], request.match_info.get("version")
    return service.model(name) if version is None else service.version(name, version)


async def server_metadata(request: web.Request) -> web.StreamResponse:
    """`GET /v2`."""
    return wire.json_response(
        {"name": "sidecar", "version": __version__, "extensions": list(EXTENSIONS)}
    )


async def server_live(request: web.Request) -> web.StreamResponse:
    """`GET /v2/health/live`: as `/livez` (503 after a fatal device error or on a hung pass)."""
    service = request.app[SERVICE]
    if service.failure() is not None:
        service.check_ready()  # raises the device failure's 503
    return wire.json_response({"live": True})


async def server_ready(request: web.Request) -> web.StreamResponse:
    """`GET /v2/health/ready`: as `/readyz` (503 while loading or draining)."""
    request.app[SERVICE].check_ready()
    return wire.json_response({"ready": True})


async def model_metadata(request: web.Request) -> web.StreamResponse:
    """`GET /v2/models/{model}[/versions/{version}]`."""
    served = _served(request)
    card = served.engine.card
    signature = Signature.of(card)
    return wire.json_response(
        {
            "name": served.name,
            "versions": _ready_versions(request),
            "platform": _PLATFORMS.get(card.backend, card.backend),
            "inputs": [_metadata(*spec) for spec in signature.inputs],
            "outputs": [_metadata(*spec) for spec in signature.outputs],
        }
    )


def _ready_versions(request: web.Request) -> list[str]:
    listed = request.app[SERVICE].versions()["versions"]
    assert isinstance(listed, list)
    return [v["version"] for v in listed if v["state"] == "ready"]


def _metadata(name: str, datatype: str, shape: tuple[int, ...]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape)}


async def model_ready(request: web.Request) -> web.StreamResponse:
    """`GET /v2/models/{model}[/versions/{version}]/ready`: 200 when it takes requests."""
    served = _served(request)
    request.app[SERVICE].check_ready()
    return wire.json_response({"name": served.name, "ready": True})


@wire.inference
async def infer(request: web.Request) -> web.StreamResponse:
    """`POST /v2/models/{model}[/versions/{version}]/infer`."""
    served = wire.route(request, request.match_info["model"])
    settings = request.app[SERVICE].settings
    signature = Signature.of(served.engine.card)
    body = await wire.read_body(request)
    header, binary = oip_tensors.split_body(body, request.headers.get(HEADER_LENGTH))
    parse = functools.partial(
        InferRequest.parse, max_bytes=len(body), max_items=settings.max_client_batch
    )
    if len(body) > _DECODE_OFF_LOOP_BYTES:
        parsed = await asyncio.to_thread(parse, header, binary, signature)
    else:
        parsed = parse(header, binary, signature)
    inputs = _model_inputs(served.engine.card, parsed)
    inference = await wire.infer(request, served, inputs)
    results = _output_arrays(served.engine.card, inference.result)
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, as_binary in zip(parsed.outputs, parsed.binary, strict=True):
        tensor, raw = oip_tensors.encode(results[name], binary=as_binary)
        outputs.append({"name": name, **tensor})
        if raw is not None:
            chunks.append(raw)
    answer: dict[str, Any] = {"model_name": served.name, "model_version": served.version}
    if parsed.id is not None:
        answer["id"] = parsed.id
    answer["outputs"] = outputs
    if not chunks:
        return wire.json_response(answer)
    head = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    return web.Response(
        body=b"".join([head, *chunks]),
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )


def _model_inputs(card: ModelCard, parsed: InferRequest) -> Inputs:
    """The serving layer's inputs for the request's arrays."""
    arrays = parsed.arrays
    if card.task == "tensor":
        return TensorInputs(dict(arrays), outputs=parsed.outputs)
    options = parsed.parameters
    texts = _texts(arrays["text"], "text")
    truncate = _flag(options, "truncate", False)
    if card.task == "rerank":
        query = _texts(arrays["query"], "query")
        if len(query) != 1:
            raise InvalidInputError(f"input 'query' must hold one element, not {len(query)}")
        return PairInputs(
            query[0], texts, truncate=truncate, raw_scores=_flag(options, "raw_scores", False)
        )
    return TextInputs(texts, truncate=truncate, normalize=_flag(options, "normalize", True))


def _texts(array: Array, name: str) -> list[str]:
    """A BYTES input of shape [N] or [N, 1] as N texts (UTF-8)."""
    if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[1] != 1):
        raise InvalidInputError(f"input {name!r} must have shape [N] or [N, 1]")
    if array.size == 0:
        raise InvalidInputError(f"input {name!r} must not be empty")
    try:
        return [item.decode("utf-8") for item in array.ravel()]
    except UnicodeDecodeError:
        raise InvalidInputError(f"input {name!r}: elements must be UTF-8 text") from None


def _flag(parameters: dict[str, Any], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInputError(f"'parameters.{name}' must be a boolean")
    return value


def _output_arrays(card: ModelCard, result: Result) -> dict[str, Array]:
    if isinstance(result, Tensors):
        return result.outputs
    if isinstance(result, Embeddings):
        return {"embedding": result.vectors}
    if isinstance(result, Scores):
        return {"scores": result.values}
    if isinstance(result, Classifications):
        labels = card.labels or ()
        rows = [[item.scores[label] for label in labels] for item in result.items]
        return {"probabilities": _float32(rows, len(labels))}
    raise TypeError(f"no Open Inference Protocol outputs for {type(result).__name__}")


def _float32(rows: list[list[float]], width: int) -> Array:
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), width)
