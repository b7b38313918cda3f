"""Request bodies: parsed and checked before anything reaches the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.errors import InvalidInputError, InvalidJsonError, TooManyInputsError


@dataclass(frozen=True)
class PredictRequest:
    """A parsed `/v1/predict` body."""

    texts: list[str]
    truncate: bool = False
    normalize: bool = True


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A parsed OpenAI `/v1/embeddings` body."""

    texts: list[str]
    model: str | None
    encoding_format: str
    dimensions: int | None
    truncate: bool = False


_PREDICT_KEYS = {"inputs", "parameters"}
_PARAMETERS = {"truncate": bool, "normalize": bool}
# `truncate` is our extension (as in TEI): OpenAI itself refuses inputs over the limit.
_EMBEDDINGS_KEYS = {"input", "model", "encoding_format", "dimensions", "user", "truncate"}


def parse_json(body: bytes) -> dict[str, Any]:
    """Decode a JSON object body (NaN and Infinity are not JSON and are refused)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJsonError(f"the body is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise InvalidInputError("the body must be a JSON object")
    return value


def parse_predict(body: bytes, *, max_inputs: int) -> PredictRequest:
    """Check a predict body: `{"inputs": [...], "parameters": {...}}`."""
    data, texts = _with_texts(body, _PREDICT_KEYS, "inputs", max_inputs, allow_objects=True)
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError("'parameters' must be an object")
    _refuse_unknown(parameters, set(_PARAMETERS), "parameter")
    for name, kind in _PARAMETERS.items():
        if name in parameters and not isinstance(parameters[name], kind):
            raise InvalidInputError(f"parameters.{name} must be a boolean")
    return PredictRequest(
        texts,
        truncate=parameters.get("truncate", False),
        normalize=parameters.get("normalize", True),
    )


def parse_embeddings(body: bytes, *, max_inputs: int) -> EmbeddingsRequest:
    """Check an OpenAI embeddings body."""
    data, texts = _with_texts(body, _EMBEDDINGS_KEYS, "input", max_inputs, allow_objects=False)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidInputError("'model' must be a string")
    encoding = data.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidInputError("'encoding_format' must be 'float' or 'base64'")
    dimensions = data.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise InvalidInputError("'dimensions' must be a positive integer")
    truncate = data.get("truncate", False)
    if not isinstance(truncate, bool):
        raise InvalidInputError("'truncate' must be a boolean")
    return EmbeddingsRequest(texts, model, encoding, dimensions, truncate)


def _with_texts(
    body: bytes, known: set[str], field: str, max_inputs: int, *, allow_objects: bool
) -> tuple[dict[str, Any], list[str]]:
    """The body as an object with only `known` keys, and its required input texts."""
    data = parse_json(body)
    _refuse_unknown(data, known, "field")
    if field not in data:
        raise InvalidInputError(f"'{field}' is required")
    return data, _texts(data[field], field, max_inputs, allow_objects=allow_objects)


def _texts(value: Any, field: str, max_inputs: int, *, allow_objects: bool) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise InvalidInputError(f"'{field}' must be a string or a list of strings")
    if not value:
        raise InvalidInputError(f"'{field}' must not be empty")
    if len(value) > max_inputs:
        raise TooManyInputsError(
            f"'{field}' has {len(value)} items; at most {max_inputs} are allowed per request"
        )
    texts: list[str] = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            texts.append(item)
        elif allow_objects and isinstance(item, dict) and isinstance(item.get("text"), str):
            if set(item) != {"text"}:
                raise InvalidInputError(f"{field}[{index}] may only have the key 'text'")
            texts.append(item["text"])
        elif isinstance(item, int | list) and not allow_objects:
            raise InvalidInputError(
                f"{field}[{index}]: token-id inputs are not supported; send text"
            )
        else:
            shape = 'a string or {"text": string}' if allow_objects else "a string"
            raise InvalidInputError(f"{field}[{index}] must be {shape}")
    return texts


def _refuse_unknown(data: dict[str, Any], known: set[str], what: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInputError(
            f"unknown {what}(s): {', '.join(unknown)}; accepted: {', '.join(sorted(known))}"
        )
