"""The native job API (DESIGN section 13): bulk work that runs in idle capacity.

POST   /v1/jobs                {"endpoint", "inputs": [...], "parameters"?, "callback_url"?,
                                "metadata"?} -> 202, Location, the job
GET    /v1/jobs                newest first: ?after=<id>&limit=
GET    /v1/jobs/{id}           the job: status, progress, estimated_completion
GET    /v1/jobs/{id}/results   NDJSON lines {"index", "result" | "error"}, ?offset=&limit=, in
                               input order, readable while the job runs
GET    /v1/jobs/{id}/events    Server-Sent Events: `progress` on every change, until it ends
POST   /v1/jobs/{id}/cancel    -> the job (cancelling, then cancelled)
DELETE /v1/jobs/{id}           a finished job and its results (409 while it runs)

Without SIDECAR_JOBS_DIR every route answers 501 naming it. A body may hold up to
SIDECAR_JOB_MAX_BODY_BYTES and SIDECAR_JOB_MAX_INPUTS inputs (413 beyond).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from sidecar.api import job_lines, native, openai, openapi, rerank, wire
from sidecar.api.keys import JOBS, REQUEST_ID, SERVICE
from sidecar.api.openapi import INTEGER, NUMBER, STRING, array, json_content, nullable, record
from sidecar.api.schema import Choice, Field, JsonSchema, Limits, Object, String, Type
from sidecar.errors import (
    InvalidInputError,
    JobNotFoundError,
    JobsDisabledError,
    TooManyInputsError,
)
from sidecar.jobs_settings import origin_of

if TYPE_CHECKING:
    from sidecar.serving.jobs import Job, Jobs

TERMINAL = ("completed", "failed", "cancelled")
LIST_LIMIT = 100  # jobs or files per page, at most
RESULTS_LIMIT = 10_000  # result lines per page, at most
UPLOAD_DEADLINE_S = 600.0  # the longest a job body or file upload may take to arrive
KEEPALIVE_S = 15.0  # an SSE comment this often while nothing changes


class JsonValues(Type):
    """A non-empty list of JSON values, at most the job input limit (413 beyond)."""

    def check(self, value: Any, path: str, limits: Limits) -> Any:
        if not isinstance(value, list) or not value:
            raise InvalidInputError(f"'{path}' must be a non-empty array")
        return value

    def json_schema(self, limits: Limits) -> JsonSchema:
        return {"type": "array", "minItems": 1, "description": "one input per item"}


class JsonObject(Type):
    """Any JSON object."""

    def check(self, value: Any, path: str, limits: Limits) -> Any:
        if not isinstance(value, dict):
            raise InvalidInputError(f"'{path}' must be an object")
        return value

    def json_schema(self, limits: Limits) -> JsonSchema:
        return {"type": "object"}


SUBMIT = Object(
    {
        "endpoint": Field(Choice(*job_lines.ENDPOINTS), required=True),
        "inputs": Field(JsonValues(), required=True),
        "parameters": Field(JsonObject(), default={}, description="the endpoint's parameters"),
        "callback_url": Field(String(), nullable=True, description="an allowed origin's URL"),
        "metadata": Field(JsonObject(), nullable=True, description="kept and returned as is"),
    }
)
# What a single input of each endpoint stands in for when its parameters are checked.
_PROBES: dict[str, Any] = {
    "/v1/predict": "probe",
    "/v1/embeddings": "probe",
    "/v1/rerank": {"query": "probe", "documents": ["probe"]},
    "/rerank": {"query": "probe", "documents": ["probe"]},
}


def jobs_of(request: web.Request) -> Jobs:
    """The app's jobs, or 501 when SIDECAR_JOBS_DIR is unset."""
    jobs = request.app[JOBS]
    if jobs is None:
        raise JobsDisabledError("jobs are off: set SIDECAR_JOBS_DIR to a writable directory")
    return jobs


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/jobs", submit),
        web.get("/v1/jobs", list_jobs),
        web.get("/v1/jobs/{id}", get_job),
        web.get("/v1/jobs/{id}/results", results),
        web.get("/v1/jobs/{id}/events", events),
        web.post("/v1/jobs/{id}/cancel", cancel),
        web.delete("/v1/jobs/{id}", delete),
    ]


async def read_bulk_json(request: web.Request, jobs: Jobs) -> dict[str, Any]:
    """A job body: up to SIDECAR_JOB_MAX_BODY_BYTES, decoded off the loop (it may be large)."""
    body = await wire.read_body(request, jobs.settings.max_body_bytes, deadline_s=UPLOAD_DEADLINE_S)
    return await asyncio.to_thread(wire.parse_json, body)


def check_callback(jobs: Jobs, url: str | None) -> None:
    """Raise 400 unless `url` is None or on an origin SIDECAR_JOB_CALLBACK_ALLOW lists."""
    if url is not None and origin_of(url) not in jobs.settings.callback_allow:
        raise InvalidInputError(
            "'callback_url' must be an http(s) URL on an origin SIDECAR_JOB_CALLBACK_ALLOW lists"
        )


def check_endpoint(request: web.Request, endpoint: str) -> None:
    """Raise 400 unless the served model serves `endpoint`'s task (503 while loading)."""
    service = request.app[SERVICE]
    service.check_ready()
    wire.check_task(service.model(None), endpoint, *job_lines.ENDPOINTS[endpoint])


async def submit(request: web.Request) -> web.StreamResponse:
    """`POST /v1/jobs`."""
    jobs = jobs_of(request)
    limits = Limits.of(request.app[SERVICE].settings)
    async with jobs.submitting:
        body = SUBMIT.parse(await read_bulk_json(request, jobs), limits)
        endpoint, inputs, parameters = body["endpoint"], body["inputs"], body["parameters"]
        if len(inputs) > jobs.settings.max_inputs:
            raise TooManyInputsError(
                f"the job has {len(inputs)} inputs; at most {jobs.settings.max_inputs} are "
                "allowed (SIDECAR_JOB_MAX_INPUTS)"
            )
        check_endpoint(request, endpoint)
        check_callback(jobs, body["callback_url"])
        probe = job_lines.request_body(endpoint, _PROBES[endpoint], parameters)
        _check_parameters(endpoint, probe, limits)
        lines = await asyncio.to_thread(_lines, inputs)
        del inputs
        job = await jobs.submit(
            "job",
            endpoint,
            inputs=lines,
            total=len(lines),
            parameters=orjson.dumps(parameters).decode(),
            metadata=None if body["metadata"] is None else orjson.dumps(body["metadata"]).decode(),
            callback_url=body["callback_url"],
        )
    location = f"/v1/jobs/{job.id}"
    response = wire.json_response(view(jobs, job), status=202)
    response.headers["Location"] = location
    return response


def _lines(inputs: list[Any]) -> list[bytes]:
    return [orjson.dumps(value) for value in inputs]


def _check_parameters(endpoint: str, probe: dict[str, Any], limits: Limits) -> None:
    schema = {"/v1/predict": native.PREDICT, "/v1/embeddings": openai.EMBEDDINGS}.get(
        endpoint, rerank.RERANK
    )
    schema.parse(probe, limits)


def view(jobs: Jobs | None, job: Job) -> dict[str, Any]:
    """A job as the native API shows it (`jobs`: for the estimate, when it still runs)."""
    estimate = None if jobs is None else jobs.estimated_completion(job)
    return {
        "id": job.id,
        "object": "job",
        "endpoint": job.endpoint,
        "status": str(job.status),
        "created_at": int(job.created_at),
        "started_at": _seconds(job.started_at),
        "finished_at": _seconds(job.finished_at),
        "progress": {"completed": job.completed, "failed": job.failed, "total": job.total},
        "estimated_completion": None if estimate is None else round(estimate),
        "metadata": None if job.metadata is None else orjson.loads(job.metadata),
        "error": None if job.error is None else orjson.loads(job.error),
        "results_url": f"/v1/jobs/{job.id}/results",
    }


def _seconds(value: float | None) -> int | None:
    return None if value is None else int(value)


async def get_job(request: web.Request) -> web.StreamResponse:
    """`GET /v1/jobs/{id}`."""
    jobs = jobs_of(request)
    return wire.json_response(view(jobs, await jobs.get(request.match_info["id"], "job")))


async def list_jobs(request: web.Request) -> web.StreamResponse:
    """`GET /v1/jobs?after=&limit=`."""
    jobs = jobs_of(request)
    after, limit = page_query(request)
    page = await jobs.page("job", after=after, limit=limit + 1)
    return wire.json_response(
        {
            "object": "list",
            "data": [view(jobs, job) for job in page[:limit]],
            "has_more": len(page) > limit,
        }
    )


def page_query(request: web.Request) -> tuple[str | None, int]:
    """`after` and `limit` (1-100, default 20) of a list route."""
    return request.query.get("after"), int_query(request, "limit", 20, 1, LIST_LIMIT)


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidInputError(f"'{name}' must be an integer from {low} to {high}")
    return value


async def results(request: web.Request) -> web.StreamResponse:
    """`GET /v1/jobs/{id}/results?offset=&limit=`: NDJSON, what is committed so far."""
    jobs = jobs_of(request)
    job = await jobs.get(request.match_info["id"], "job")
    offset = int_query(request, "offset", 0, 0, 1 << 40)
    limit = int_query(request, "limit", 1000, 1, RESULTS_LIMIT)
    body = await jobs.results(job, offset, limit)
    response = web.Response(body=body, content_type="application/x-ndjson")
    response.headers["X-Job-Status"] = str(job.status)
    response.headers["X-Next-Offset"] = str(offset + body.count(b"\n"))
    return response


async def events(request: web.Request) -> web.StreamResponse:
    """`GET /v1/jobs/{id}/events`: `progress` events until the job ends."""
    jobs = jobs_of(request)
    job_id = request.match_info["id"]
    job = await jobs.get(job_id, "job")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Request-Id": request[REQUEST_ID],  # sent before the middleware sees the response
        }
    )
    await response.prepare(request)
    last: tuple[Any, ...] | None = None
    while True:
        state = (job.status, job.completed, job.failed)
        if state != last:
            data = orjson.dumps(view(jobs, job))
            await response.write(b"event: progress\ndata: " + data + b"\n\n")
            last = state
        if str(job.status) in TERMINAL:
            break
        started = time.monotonic()
        await jobs.wait_change(KEEPALIVE_S)
        if time.monotonic() - started >= KEEPALIVE_S:
            await response.write(b": keep-alive\n\n")
        try:
            job = await jobs.get(job_id, "job")
        except JobNotFoundError:  # deleted meanwhile: the stream ends
            break
    await response.write_eof()
    return response


async def cancel(request: web.Request) -> web.StreamResponse:
    """`POST /v1/jobs/{id}/cancel`."""
    jobs = jobs_of(request)
    job = await jobs.cancel(request.match_info["id"], "job")
    return wire.json_response(view(jobs, job))


async def delete(request: web.Request) -> web.StreamResponse:
    """`DELETE /v1/jobs/{id}`."""
    jobs = jobs_of(request)
    job_id = request.match_info["id"]
    await jobs.delete(job_id, "job")
    return wire.json_response({"id": job_id, "object": "job", "deleted": True})


_JOB: JsonSchema = record(
    id=STRING,
    object={"const": "job"},
    endpoint=STRING,
    status={"enum": ["queued", "running", "finalizing", "completed", "failed", "cancelling",
                     "cancelled"]},
    created_at=INTEGER,
    started_at=nullable(INTEGER),
    finished_at=nullable(INTEGER),
    progress=record(completed=INTEGER, failed=INTEGER, total=INTEGER),
    estimated_completion=nullable(NUMBER),
    metadata=nullable({"type": "object"}),
    error=nullable({"type": "object"}),
    results_url=STRING,
)  # fmt: skip
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_QUERY = [
    {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
    for name in ("after", "limit")
]


def openapi_paths(limits: Limits) -> dict[str, dict[str, Any]]:
    def op(summary: str, ok: dict[str, Any], errors: list[int], **kwargs: Any) -> dict[str, Any]:
        return openapi.operation(
            summary, limits=limits, ok=ok, errors=[*errors, 501], tag="jobs", **kwargs
        )

    job = json_content(_JOB)
    ndjson = {"application/x-ndjson": {"schema": {"type": "string"}}}
    event = record(event={"const": "progress"}, data={"type": "string", "description": "a job"})
    sse = {"text/event-stream": {"schema": event}}
    listed = json_content(record(object={"const": "list"}, data=array(_JOB), has_more={}))
    deleted = json_content(record(id=STRING, object={"const": "job"}, deleted={"const": True}))
    offsets = [
        {"name": name, "in": "query", "required": False, "schema": {"type": "integer"}}
        for name in ("offset", "limit")
    ]
    return {
        "/v1/jobs": {
            "post": op("Submit a job", job, [507], body=SUBMIT, ok_status=202),
            "get": op("Jobs, newest first", listed, [], parameters=_QUERY),
        },
        "/v1/jobs/{id}": {
            "get": op("A job", job, [404], parameters=[_ID]),
            "delete": op("Delete a finished job", deleted, [404, 409], parameters=[_ID]),
        },
        "/v1/jobs/{id}/results": {
            "get": op("Results so far (NDJSON)", ndjson, [404], parameters=[_ID, *offsets])
        },
        "/v1/jobs/{id}/events": {"get": op("Progress events (SSE)", sse, [404], parameters=[_ID])},
        "/v1/jobs/{id}/cancel": {"post": op("Cancel a job", job, [404, 409], parameters=[_ID])},
    }
