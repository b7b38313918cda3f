"""`GET /openapi.json`: the OpenAPI 3.1 document of every route of every protocol.

Each protocol module exposes `openapi_paths(limits)` beside `routes()`: its path items, built with
`operation`, whose request bodies are the very `sidecar.api.schema` types its handlers check bodies
with. `document` assembles the modules' paths once, when the app is built; the route serves those
bytes. Like every route but the probes, it asks for the bearer token when one is set.

Every operation lists the statuses it can answer: its own, and those any route of the listener
may give (malformed HTTP 400, 414, 417, 431; 503 when the connections are used up; 500, which is a
bug). With a token, guarded operations also list 401 and the `bearer` scheme; without one, neither.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

from sidecar import __version__
from sidecar.api.keys import OPENAPI
from sidecar.api.schema import JsonSchema, Limits, Object

VERSION = "3.1.0"

ERROR: JsonSchema = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "description": "machine-readable, e.g. invalid_input"},
                "message": {"type": "string", "description": "for humans"},
                "request_id": {"type": "string", "description": "as in X-Request-Id"},
            },
        }
    },
}
ERROR_REF: JsonSchema = {"$ref": "#/components/schemas/Error"}

# What each status means, with the error codes it carries.
STATUSES: dict[int, str] = {
    400: "invalid input: invalid_json, invalid_input, input_too_long, unsupported_task; "
    "bad_request (malformed HTTP)",
    401: "unauthorized: the bearer token is missing or wrong",
    404: "model_not_found: the URL or body names a model not served here; job_not_found, "
    "file_not_found: no job, batch or file of that id",
    408: "request_timeout: the body did not arrive before the deadline",
    409: "job_conflict: the job's status does not allow it (cancel a finished job, delete a "
    "running one)",
    413: "payload_too_large (the body), too_many_inputs (the list of inputs)",
    414: "uri_too_long: the request line is too long",
    415: "unsupported_encoding: request bodies must not be compressed",
    417: "expectation_failed: only 'Expect: 100-continue' is taken",
    429: "queue_full (the model's queue), server_busy (request bodies held at once); "
    "see Retry-After",
    431: "headers_too_large",
    500: "internal_error: a bug; the message says nothing of the inside",
    501: "jobs_disabled: jobs need SIDECAR_JOBS_DIR",
    503: "not_ready (loading), draining, too_many_connections (the listener's cap), "
    "jobs_locked (another sidecar holds SIDECAR_JOBS_DIR), see Retry-After; device_failed "
    "(the container restarts)",
    504: "deadline_exceeded: the result was not ready by the deadline",
    507: "storage_full: the jobs storage (SIDECAR_JOBS_MAX_BYTES) has no room",
}
# Statuses any route of the API listener may answer, before or around its handler.
LISTENER_STATUSES = (400, 414, 417, 431, 500, 503)
# Statuses an inference route (a POST with a body) adds to its own.
BODY_STATUSES = (400, 408, 413, 415, 429, 503, 504)

_REQUEST_ID: JsonSchema = {
    "description": "the client's X-Request-Id when it matches [A-Za-z0-9._:-]{1,128}, "
    "else a generated one",
    "schema": {"type": "string"},
    "required": True,
}
_RETRY_AFTER: JsonSchema = {
    "description": "seconds after which a retry may succeed",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_HEADERS: dict[int, dict[str, JsonSchema]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
    415: {"Accept-Encoding": {"schema": {"type": "string", "const": "identity"}}},
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}
REQUEST_ID_PARAMETER: JsonSchema = {
    "name": "X-Request-Id",
    "in": "header",
    "required": False,
    "description": "echoed in X-Request-Id and in errors when it matches [A-Za-z0-9._:-]{1,128}",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
}
TIMEOUT_PARAMETER: JsonSchema = {
    "name": "X-Request-Timeout-Ms",
    "in": "header",
    "required": False,
    "description": "a deadline shorter than SIDECAR_REQUEST_TIMEOUT_MS, never longer",
    "schema": {"type": "integer", "minimum": 1},
}


STRING: JsonSchema = {"type": "string"}
INTEGER: JsonSchema = {"type": "integer"}
NUMBER: JsonSchema = {"type": "number"}
BOOLEAN: JsonSchema = {"type": "boolean"}


def record(**properties: JsonSchema) -> JsonSchema:
    """A response object with exactly these members."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def array(items: JsonSchema) -> JsonSchema:
    return {"type": "array", "items": items}


def nullable(schema: JsonSchema) -> JsonSchema:
    return {"anyOf": [schema, {"type": "null"}]}


def model_parameter(description: str = "the served name, or 'default'") -> JsonSchema:
    """The `{model}` path parameter."""
    return {
        "name": "model",
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def version_parameter() -> JsonSchema:
    """The `{version}` path parameter of a pinned route."""
    return {
        "name": "version",
        "in": "path",
        "required": True,
        "description": "a version, 'stable' or 'canary' (unknown: 404; not ready: 503)",
        "schema": {"type": "string"},
    }


MODEL_VERSION_PARAMETER: JsonSchema = {
    "name": "X-Model-Version",
    "in": "header",
    "required": False,
    "description": "pin the request to a version of the model, 'stable' or 'canary' "
    "(unknown: 404; not ready: 503)",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
}
ROUTING_KEY_PARAMETER: JsonSchema = {
    "name": "X-Routing-Key",
    "in": "header",
    "required": False,
    "description": "requests with the same key always go to the same version (canary share)",
    "schema": {"type": "string", "maxLength": 1024},
}
_MODEL_VERSION: JsonSchema = {
    "description": "the version that answered (or the stable one)",
    "schema": {"type": "string"},
}


def routed(path_item: dict[str, Any]) -> dict[str, Any]:
    """A path item of an inference route: routed to a version (DESIGN section 12), so it takes
    the pin and routing-key headers, names the version in X-Model-Version, and answers 404
    (an unknown pin) and 503 (a pinned version not ready)."""
    item: dict[str, Any] = {}
    for method, op in path_item.items():
        responses = dict(op["responses"])
        error = next(reply for code, reply in responses.items() if code >= "400")
        for status in (404, 503):
            responses.setdefault(
                str(status),
                {**error, "description": STATUSES[status], "headers": _headers(status)},
            )
        for code, reply in list(responses.items()):
            responses[code] = {
                **reply,
                "headers": {**reply["headers"], "X-Model-Version": _MODEL_VERSION},
            }
        parameters = [*op["parameters"], MODEL_VERSION_PARAMETER, ROUTING_KEY_PARAMETER]
        item[method] = {
            **op,
            "parameters": parameters,
            "responses": dict(sorted(responses.items())),
        }
    return item


def pinned(path_item: dict[str, Any]) -> dict[str, Any]:
    """A path item of a route pinned to a version (`/v1/models/{model}/versions/{version}/...`):
    the model and version parameters, and 404 and 503 besides the route's own statuses."""
    item: dict[str, Any] = {}
    for method, op in path_item.items():
        params = [p for p in op["parameters"] if p.get("name") != "model"]
        responses = dict(op["responses"])
        error = next(reply for code, reply in responses.items() if code >= "400")
        for status in (404, 503):
            responses.setdefault(
                str(status),
                {**error, "description": STATUSES[status], "headers": _headers(status)},
            )
        item[method] = {
            **op,
            "parameters": [model_parameter(), version_parameter(), *params],
            "responses": dict(sorted(responses.items())),
        }
    return item


def json_content(schema: JsonSchema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def operation(
    summary: str,
    *,
    limits: Limits,
    ok: Mapping[str, Any],
    errors: Iterable[int] = (),
    body: Object | None = None,
    parameters: Iterable[JsonSchema] = (),
    tag: str,
    guarded: bool = True,
    error: JsonSchema = ERROR_REF,
    ok_status: int = 200,
) -> dict[str, Any]:
    """One operation of a path item.

    Args:
        summary: one line.
        limits: the settings the body's schema depends on.
        ok: the content of the success response, by media type (`json_content`).
        errors: the statuses the operation answers besides the listener's own.
        body: the request body's type: the route checks bodies with it (a POST with a body
            also answers `BODY_STATUSES` and takes `X-Request-Timeout-Ms`).
        parameters: path and header parameters.
        tag: the protocol.
        guarded: the bearer token is asked for, when one is set.
        error: the schema of error bodies (the protocol's shape).
        ok_status: the success status.
    """
    statuses = set(errors) | set(LISTENER_STATUSES)
    params = [*parameters, REQUEST_ID_PARAMETER]
    op: dict[str, Any] = {"summary": summary, "tags": [tag]}
    if body is not None:
        statuses |= set(BODY_STATUSES)
        params.append(TIMEOUT_PARAMETER)
        op["requestBody"] = {"required": True, "content": json_content(body.json_schema(limits))}
    if guarded:
        statuses.add(401)
        op["security"] = [{"bearer": []}]
    else:
        op["security"] = []
    op["parameters"] = params
    responses: dict[str, Any] = {
        str(ok_status): {"description": "success", "headers": _headers(ok_status), "content": ok}
    }
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": STATUSES[status],
            "headers": _headers(status),
            "content": json_content(error),
        }
    op["responses"] = responses
    return op


def _headers(status: int) -> dict[str, JsonSchema]:
    return {"X-Request-Id": _REQUEST_ID, **_HEADERS.get(status, {})}


def document(protocols: Iterable[Any], limits: Limits, *, auth: bool) -> dict[str, Any]:
    """The OpenAPI document of `protocols` (modules with `openapi_paths(limits)`).

    Args:
        protocols: the modules whose routes the listener serves.
        limits: the settings schemas depend on.
        auth: a bearer token is required (else no operation lists 401 or a security scheme).
    """
    paths: dict[str, dict[str, Any]] = {}
    for protocol in protocols:
        for path, item in protocol.openapi_paths(limits).items():
            paths.setdefault(path, {}).update(item)
    if not auth:
        for item in paths.values():
            for op in item.values():
                op.pop("security", None)
                op["responses"].pop("401", None)
    doc: dict[str, Any] = {
        "openapi": VERSION,
        "info": {
            "title": "model sidecar",
            "version": __version__,
            "description": "Every route of every protocol the inference listeners serve "
            "(loopback TCP and the Unix socket alike). Errors have one shape: Error.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": {"Error": ERROR}},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def render(protocols: Iterable[Any], limits: Limits, *, auth: bool) -> bytes:
    """`document` as the bytes the route serves."""
    return orjson.dumps(document(protocols, limits, auth=auth))


def routes() -> list[web.RouteDef]:
    return [web.get("/openapi.json", openapi)]


async def openapi(request: web.Request) -> web.StreamResponse:
    """`GET /openapi.json`."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def openapi_paths(limits: Limits) -> dict[str, dict[str, Any]]:
    return {
        "/openapi.json": {
            "get": operation(
                "This document",
                limits=limits,
                ok=json_content({"type": "object", "required": ["openapi", "info", "paths"]}),
                tag="openapi",
            )
        }
    }
