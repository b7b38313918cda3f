"""What every protocol shares on the wire: guarded routes, bodies, field checks, deadlines, JSON.

Wire types stop here: handlers turn bodies into `sidecar.models` inputs and results back into
bodies; nothing below sees a request or a JSON document.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from sidecar.api.keys import ARRIVED_AT, AUTH_TOKEN, SERVICE
from sidecar.errors import (
    InvalidInputError,
    InvalidJsonError,
    PayloadTooLargeError,
    TooManyInputsError,
    UnauthorizedError,
    UnsupportedTaskError,
)

if TYPE_CHECKING:
    from sidecar.serving import ServedModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def inference(handler: Handler) -> Handler:
    """Guard an inference route: the bearer token, then admission (ready, counted for the drain)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        token = request.app[AUTH_TOKEN]
        if token is not None:
            _check_token(request, token)
        with request.app[SERVICE].admit():
            return await handler(request)

    guarded.__doc__ = handler.__doc__
    return guarded


def model_for(request: web.Request, name: str | None, *tasks: str) -> ServedModel:
    """The served model a request names, if it serves one of `tasks` (the route's).

    Raises:
        ModelNotFoundError, NotReadyError: from the service.
        UnsupportedTaskError: the model serves another task.
    """
    served = request.app[SERVICE].model(name)
    task = served.engine.card.task
    if task not in tasks:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        raise UnsupportedTaskError(
            f"model '{served.name}' serves '{task}', which {route} does not take"
        )
    return served


def json_response(payload: Any, status: int = 200) -> web.Response:
    """Serialise with orjson, numpy arrays included."""
    return web.Response(
        body=orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
    )


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, refused past the body limit before it is read."""
    max_bytes = request.app[SERVICE].settings.max_body_bytes
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLargeError(f"the body has {length} bytes; at most {max_bytes} are allowed")
    return parse_json(await request.read())


def parse_json(body: bytes) -> dict[str, Any]:
    """Decode a JSON object body (NaN and Infinity are not JSON and are refused)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJsonError(f"the body is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise InvalidInputError("the body must be a JSON object")
    return value


def deadline(request: web.Request) -> float:
    """Monotonic time by which the result is due: the setting, or sooner if the client asks."""
    timeout_ms = request.app[SERVICE].settings.request_timeout_ms
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


def refuse_unknown(data: dict[str, Any], known: set[str], what: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInputError(
            f"unknown {what}(s): {', '.join(unknown)}; accepted: {', '.join(sorted(known))}"
        )


def required(data: dict[str, Any], field: str) -> Any:
    if field not in data:
        raise InvalidInputError(f"'{field}' is required")
    return data[field]


def boolean(data: dict[str, Any], field: str, default: bool, *, name: str | None = None) -> bool:
    """`data[field]` as a boolean, `default` when absent; `name` is how the message calls it."""
    value = data.get(field, default)
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name or repr(field)} must be a boolean")
    return value


def string(data: dict[str, Any], field: str) -> str | None:
    """`data[field]` as a string, None when absent."""
    value = data.get(field)
    if value is not None and not isinstance(value, str):
        raise InvalidInputError(f"'{field}' must be a string")
    return value


def positive_int(data: dict[str, Any], field: str) -> int | None:
    """`data[field]` as a positive integer, None when absent."""
    value = data.get(field)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InvalidInputError(f"'{field}' must be a positive integer")
    return value


def texts(value: Any, field: str, max_inputs: int, *, allow_objects: bool) -> list[str]:
    """A string, or a non-empty list of strings (or `{"text": ...}` objects where allowed)."""
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
    out: list[str] = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            out.append(item)
        elif allow_objects and isinstance(item, dict) and isinstance(item.get("text"), str):
            if set(item) != {"text"}:
                raise InvalidInputError(f"{field}[{index}] may only have the key 'text'")
            out.append(item["text"])
        elif isinstance(item, int | list) and not allow_objects:
            raise InvalidInputError(
                f"{field}[{index}]: token-id inputs are not supported; send text"
            )
        else:
            shape = 'a string or {"text": string}' if allow_objects else "a string"
            raise InvalidInputError(f"{field}[{index}] must be {shape}")
    return out


def _check_token(request: web.Request, token: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise UnauthorizedError("a valid 'Authorization: Bearer <token>' header is required")
