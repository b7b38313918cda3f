"""The lines of jobs on the wire: what an input line asks, and what its output line says.

A job item is one request body for an endpoint, run at the batcher's bulk priority through the
very code of that endpoint's route, so its result is the route's:

    /v1/predict      native.respond      (also the native job endpoint)
    /v1/embeddings   openai.respond
    /v1/rerank       rerank.respond      (`/rerank` is the same, as DESIGN section 13 names it)

Native jobs (`NativeLines`): each input line is one input; with the job's `parameters` it makes
the body, and the output line is `{"index", "result"}` or `{"index", "error"}`, every index in
order. OpenAI batches (`BatchLines`): each input line is `{custom_id, method, url, body}`; output
lines are OpenAI's `{id, custom_id, response: {status_code, request_id, body}, error}`, errors
(a refused request, or a malformed line with `response: null`) in the error file.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import orjson

from sidecar.api import native, openai, rerank, wire
from sidecar.errors import InvalidInputError

if TYPE_CHECKING:
    from sidecar.models import Inputs
    from sidecar.serving import Inference, Lease, ServedModel, Service
    from sidecar.serving.jobs import ItemError, Job

# Endpoint -> the tasks a model must serve for it.
ENDPOINTS: dict[str, tuple[str, ...]] = {
    "/v1/predict": ("embed", "classify"),
    "/v1/embeddings": ("embed",),
    "/v1/rerank": ("rerank",),
    "/rerank": ("rerank",),
}
MAX_CUSTOM_ID = 512


async def respond(service: Service, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """The response body of `endpoint` to `body`, computed at bulk priority."""
    with ItemCaller(service, endpoint) as caller:
        if endpoint == "/v1/predict":
            return await native.respond(caller, body, since=time.monotonic())
        if endpoint == "/v1/embeddings":
            return await openai.respond(caller, body)
        return await rerank.respond(caller, body)


class ItemCaller:
    """A job's item (`wire.Caller`): the stable version, held until the item ends (a swap
    drains it like a request); no deadline; the batcher's bulk priority; never shadowed."""

    deadline: float | None = None

    def __init__(self, service: Service, endpoint: str) -> None:
        self.service = service
        self._endpoint = endpoint
        self._leases: list[Lease] = []

    def model(self, name: str | None, *tasks: str) -> ServedModel:
        lease = self.service.route(name, "stable", None)
        self._leases.append(lease)
        served = lease.version.served
        assert served is not None  # a leased version is ready until its last lease is returned
        return wire.check_task(served, self._endpoint, *tasks)

    async def infer(self, served: ServedModel, inputs: Inputs) -> Inference:
        return await served.engine.infer(inputs, deadline=None, bulk=True)

    def __enter__(self) -> ItemCaller:
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        leases, self._leases = self._leases, []
        for lease in leases:
            lease.release(error)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


class NativeLines:
    """`POST /v1/jobs` lines: an input each; results and errors in one file, by index."""

    errors_apart = False

    def __init__(self, service: Service) -> None:
        self._service = service

    async def run(self, job: Job, line: bytes, index: int) -> tuple[bool, bytes]:
        body = request_body(job.endpoint, orjson.loads(line), orjson.loads(job.parameters))
        response = await respond(self._service, job.endpoint, body)
        return True, _dumps({"index": index, "result": _native_result(job.endpoint, response)})

    def failure(self, job: Job, line: bytes, index: int, error: ItemError) -> bytes:
        failure = {"status": error.status, "code": error.code, "message": error.message}
        return _dumps({"index": index, "error": failure})


def request_body(endpoint: str, value: Any, parameters: dict[str, Any]) -> dict[str, Any]:
    """The request body of one native job input."""
    if endpoint == "/v1/predict":
        return {"inputs": [value], "parameters": parameters}
    if endpoint == "/v1/embeddings":
        return {**parameters, "input": value}
    if not isinstance(value, dict):
        raise InvalidInputError("a rerank input must be an object {query, documents}")
    return {**parameters, **value}


def _native_result(endpoint: str, response: dict[str, Any]) -> Any:
    if endpoint == "/v1/predict":
        return response["results"][0]
    if endpoint == "/v1/embeddings":
        return {"embedding": response["data"][0]["embedding"]}
    return {"results": response["results"]}


class BatchLines:
    """OpenAI batch lines; see the module docstring."""

    errors_apart = True

    def __init__(self, service: Service) -> None:
        self._service = service

    async def run(self, job: Job, line: bytes, index: int) -> tuple[bool, bytes]:
        custom_id, url, body = parse_line(line, job.endpoint)
        response = await respond(self._service, url, body)
        request_id = f"{job.id}-{index}"
        return True, _dumps(
            {
                "id": _line_id(job, index),
                "custom_id": custom_id,
                "response": {"status_code": 200, "request_id": request_id, "body": response},
                "error": None,
            }
        )

    def failure(self, job: Job, line: bytes, index: int, error: ItemError) -> bytes:
        request_id = f"{job.id}-{index}"
        try:
            custom_id, _, _ = parse_line(line, job.endpoint)
        except InvalidInputError:  # the line itself is malformed: no request was made
            return _dumps(
                {
                    "id": _line_id(job, index),
                    "custom_id": lenient_custom_id(line),
                    "response": None,
                    "error": {"code": "invalid_request", "message": error.message},
                }
            )
        body = {"error": {"code": error.code, "message": error.message, "request_id": request_id}}
        return _dumps(
            {
                "id": _line_id(job, index),
                "custom_id": custom_id,
                "response": {"status_code": error.status, "request_id": request_id, "body": body},
                "error": None,
            }
        )


def parse_line(line: bytes, endpoint: str) -> tuple[str, str, dict[str, Any]]:
    """(custom_id, url, body) of a batch input line.

    Raises:
        InvalidInputError: the line is not `{custom_id, method: POST, url, body}` for the
            batch's endpoint.
    """
    data = wire.parse_json(line, "the line")
    custom_id, method, url, body = (data.get(k) for k in ("custom_id", "method", "url", "body"))
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
        raise InvalidInputError(f"'custom_id' must be a string of 1 to {MAX_CUSTOM_ID} characters")
    if method != "POST":
        raise InvalidInputError("'method' must be 'POST'")
    if url != endpoint and not (url in ENDPOINTS and ENDPOINTS[url] == ENDPOINTS[endpoint]):
        raise InvalidInputError(f"'url' must be the batch's endpoint, {endpoint}")
    if not isinstance(body, dict):
        raise InvalidInputError("'body' must be an object")
    unknown = sorted(set(data) - {"custom_id", "method", "url", "body"})
    if unknown:
        raise InvalidInputError(f"unknown member '{unknown[0][:64]}' in the line")
    return custom_id, endpoint, body


def lenient_custom_id(line: bytes) -> str | None:
    """The line's custom_id if it has a usable one, whatever else is wrong with it."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    custom_id = value.get("custom_id") if isinstance(value, dict) else None
    return custom_id if isinstance(custom_id, str) and len(custom_id) <= MAX_CUSTOM_ID else None


def _line_id(job: Job, index: int) -> str:
    # The same for a line computed twice (a crash before its commit): outputs stay identical.
    return "batch_req_" + hashlib.sha256(f"{job.id}:{index}".encode()).hexdigest()[:24]
