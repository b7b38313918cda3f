"""The OpenAI Batch API (files and batches) on the job runner, for the official clients.

POST   /v1/files                  multipart `purpose=batch` + `file` (JSONL) -> the file object
GET    /v1/files                  ?purpose=&after=&limit=
GET    /v1/files/{id}             the file object
GET    /v1/files/{id}/content     the file's bytes (inputs, or a batch's output or error file)
DELETE /v1/files/{id}
POST   /v1/batches                {"input_file_id", "endpoint", "completion_window": "24h",
                                   "metadata"?} -> the batch object
GET    /v1/batches                ?after=&limit=
GET    /v1/batches/{id}
POST   /v1/batches/{id}/cancel

Input lines are `{custom_id, method: "POST", url, body}` for /v1/embeddings, /v1/predict or
/v1/rerank (`job_lines`); a malformed line is an error line of the batch, never its failure.
Statuses are OpenAI's: validating (queued), in_progress, finalizing, completed, failed,
cancelling, cancelled (`expired` is never reached: a batch runs until it is done).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from sidecar.api import job_lines, openapi, wire
from sidecar.api.jobs import (
    UPLOAD_DEADLINE_S,
    JsonObject,
    check_endpoint,
    jobs_of,
    page_query,
)
from sidecar.api.keys import REQUEST_ID, SERVICE
from sidecar.api.openapi import INTEGER, STRING, array, json_content, nullable, record
from sidecar.api.schema import Choice, Field, JsonSchema, Limits, Object, String
from sidecar.errors import InvalidInputError, PayloadTooLargeError, TooManyInputsError

if TYPE_CHECKING:
    from sidecar.serving.jobs import Job, Jobs, StoredFile

PURPOSES = ("batch",)
STATUSES = {"queued": "validating", "running": "in_progress"}
CONTENT_CHUNK = 1 << 20
MAX_FIELD_BYTES = 1024  # a multipart field other than the file

CREATE = Object(
    {
        "input_file_id": Field(String(), required=True),
        "endpoint": Field(Choice(*job_lines.ENDPOINTS), required=True),
        "completion_window": Field(Choice("24h"), default="24h"),
        "metadata": Field(JsonObject(), nullable=True),
    }
)


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/files", upload),
        web.get("/v1/files", list_files),
        web.get("/v1/files/{id}", get_file),
        web.get("/v1/files/{id}/content", content),
        web.delete("/v1/files/{id}", delete_file),
        web.post("/v1/batches", create),
        web.get("/v1/batches", list_batches),
        web.get("/v1/batches/{id}", get_batch),
        web.post("/v1/batches/{id}/cancel", cancel),
    ]


# -- files -----------------------------------------------------------------------------------


def file_view(jobs: Jobs, stored: StoredFile) -> dict[str, Any]:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.bytes,
        "created_at": int(stored.created_at),
        "expires_at": int(stored.created_at + jobs.settings.retention_s),
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
        "status_details": None,
    }


async def upload(request: web.Request) -> web.StreamResponse:
    """`POST /v1/files`: the file streams to disk, never whole in memory."""
    jobs = jobs_of(request)
    max_bytes = jobs.settings.max_body_bytes
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLargeError(
            f"the body has {request.content_length} bytes; at most {max_bytes} are allowed"
            " (SIDECAR_JOB_MAX_BODY_BYTES)"
        )
    if not request.content_type.startswith("multipart/form-data"):
        raise InvalidInputError("upload the file as multipart/form-data (fields purpose, file)")
    await jobs.check_room(0)
    purpose: str | None = None
    stored: StoredFile | None = None
    try:
        try:
            async with asyncio.timeout(UPLOAD_DEADLINE_S):
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    if not isinstance(part, BodyPartReader):
                        raise InvalidInputError("nested multipart bodies are not taken")
                    if part.name == "file":
                        if stored is not None:
                            raise InvalidInputError("one 'file' field per upload")
                        stored = await _store_part(jobs, part, max_bytes, purpose)
                    elif part.name == "purpose":
                        purpose = (await part.read(decode=True))[:MAX_FIELD_BYTES].decode(
                            errors="replace"
                        )
                    else:
                        await part.release()
        except TimeoutError:
            raise InvalidInputError("the upload did not arrive in time") from None
        except (ValueError, HttpProcessingError) as exc:  # aiohttp: a malformed body, part header
            message = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
            raise InvalidInputError(f"malformed multipart body: {message[:100]}") from None
        if stored is None:
            raise InvalidInputError("the upload has no 'file' field")
        if purpose not in PURPOSES:
            raise InvalidInputError("'purpose' must be 'batch'")
    except BaseException:
        if stored is not None:  # whatever failed once the file was stored: it goes too
            await jobs.delete_file(stored.id)
        raise
    return wire.json_response(file_view(jobs, stored))


async def _store_part(
    jobs: Jobs, part: BodyPartReader, max_bytes: int, purpose: str | None
) -> StoredFile:
    pending = await jobs.upload()
    try:
        while chunk := await part.read_chunk(1 << 16):
            if pending.size + len(chunk) > max_bytes:
                raise PayloadTooLargeError(
                    f"the file has more than {max_bytes} bytes (SIDECAR_JOB_MAX_BODY_BYTES)"
                )
            await pending.write(chunk)
    except BaseException:
        await pending.abandon()
        raise
    filename = (part.filename or "upload.jsonl")[:255]
    return await pending.store(purpose or "batch", filename)


async def list_files(request: web.Request) -> web.StreamResponse:
    """`GET /v1/files`."""
    jobs = jobs_of(request)
    after, limit = page_query(request)
    page = await jobs.files(request.query.get("purpose"), after=after, limit=limit + 1)
    data = [file_view(jobs, stored) for stored in page[:limit]]
    return wire.json_response(_list(data, len(page) > limit))


def _list(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


async def get_file(request: web.Request) -> web.StreamResponse:
    """`GET /v1/files/{id}`."""
    jobs = jobs_of(request)
    return wire.json_response(file_view(jobs, await jobs.file(request.match_info["id"])))


async def content(request: web.Request) -> web.StreamResponse:
    """`GET /v1/files/{id}/content`, streamed a chunk at a time."""
    jobs = jobs_of(request)
    stored = await jobs.file(request.match_info["id"])
    response = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "X-Request-Id": request[REQUEST_ID]}
    )
    response.content_length = stored.bytes
    await response.prepare(request)
    for start in range(0, stored.bytes, CONTENT_CHUNK):
        await response.write(await jobs.file_bytes(stored, start, CONTENT_CHUNK))
    await response.write_eof()
    return response


async def delete_file(request: web.Request) -> web.StreamResponse:
    """`DELETE /v1/files/{id}`."""
    jobs = jobs_of(request)
    file_id = request.match_info["id"]
    await jobs.delete_file(file_id)
    return wire.json_response({"id": file_id, "object": "file", "deleted": True})


# -- batches ---------------------------------------------------------------------------------


def batch_view(job: Job) -> dict[str, Any]:
    status = str(job.status)
    finished = None if job.finished_at is None else int(job.finished_at)
    error = None if job.error is None else orjson.loads(job.error)
    return {
        "id": job.id,
        "object": "batch",
        "endpoint": job.endpoint,
        "errors": None if error is None else {"object": "list", "data": [error]},
        "input_file_id": job.input_file_id,
        "completion_window": job.completion_window or "24h",
        "status": STATUSES.get(status, status),
        "output_file_id": job.output_file_id,
        "error_file_id": job.error_file_id,
        "created_at": int(job.created_at),
        "in_progress_at": None if job.started_at is None else int(job.started_at),
        "expires_at": int(job.created_at) + 86400,
        "finalizing_at": None if job.finalizing_at is None else int(job.finalizing_at),
        "completed_at": finished if status == "completed" else None,
        "failed_at": finished if status == "failed" else None,
        "expired_at": None,
        "cancelling_at": None if job.cancelling_at is None else int(job.cancelling_at),
        "cancelled_at": finished if status == "cancelled" else None,
        "request_counts": {"total": job.total, "completed": job.completed, "failed": job.failed},
        "metadata": None if job.metadata is None else orjson.loads(job.metadata),
    }


async def create(request: web.Request) -> web.StreamResponse:
    """`POST /v1/batches`."""
    jobs = jobs_of(request)
    body = CREATE.parse(await wire.read_json(request), Limits.of(request.app[SERVICE].settings))
    endpoint = body["endpoint"]
    check_endpoint(request, endpoint)
    stored = await jobs.file(body["input_file_id"])
    if stored.purpose != "batch":
        raise InvalidInputError(f"file '{stored.id}' has purpose '{stored.purpose}', not 'batch'")
    survey = await jobs.survey(stored, job_lines.lenient_custom_id)
    lines = survey.count
    if lines == 0:
        raise InvalidInputError(f"file '{stored.id}' has no request lines")
    if lines > jobs.settings.max_inputs:
        raise TooManyInputsError(
            f"the file has {lines} request lines; at most {jobs.settings.max_inputs} are allowed"
            " (SIDECAR_JOB_MAX_INPUTS)"
        )
    metadata = body["metadata"]
    job = await jobs.submit(
        "batch",
        endpoint,
        input_file=stored,
        total=lines,
        metadata=None if metadata is None else orjson.dumps(metadata).decode(),
        completion_window=body["completion_window"],
        failure=None if survey.repeat is None else _duplicate(*survey.repeat),
    )
    return wire.json_response(batch_view(job))


def _duplicate(line: int, custom_id: str, earlier: int) -> str:
    """The error of a batch whose input repeats a custom_id (OpenAI fails such a batch at
    validation: outputs are matched to requests by it)."""
    error = {
        "code": "duplicate_custom_id",
        "message": f"the custom_id {custom_id[:64]!r} of line {line} is line {earlier}'s too;"
        " the custom_id of each request in a batch must be unique",
        "param": "custom_id",
        "line": line,
    }
    return orjson.dumps(error).decode()


async def get_batch(request: web.Request) -> web.StreamResponse:
    """`GET /v1/batches/{id}`."""
    jobs = jobs_of(request)
    return wire.json_response(batch_view(await jobs.get(request.match_info["id"], "batch")))


async def list_batches(request: web.Request) -> web.StreamResponse:
    """`GET /v1/batches`."""
    jobs = jobs_of(request)
    after, limit = page_query(request)
    page = await jobs.page("batch", after=after, limit=limit + 1)
    return wire.json_response(_list([batch_view(job) for job in page[:limit]], len(page) > limit))


async def cancel(request: web.Request) -> web.StreamResponse:
    """`POST /v1/batches/{id}/cancel`."""
    jobs = jobs_of(request)
    return wire.json_response(batch_view(await jobs.cancel(request.match_info["id"], "batch")))


_FILE = record(
    id=STRING, object={"const": "file"}, bytes=INTEGER, created_at=INTEGER,
    expires_at=INTEGER, filename=STRING, purpose=STRING, status=STRING, status_details={},
)  # fmt: skip
_STAMP = nullable(INTEGER)
_BATCH = record(
    id=STRING, object={"const": "batch"}, endpoint=STRING, errors=nullable({"type": "object"}),
    input_file_id=STRING, completion_window=STRING, status=STRING,
    output_file_id=nullable(STRING), error_file_id=nullable(STRING), created_at=INTEGER,
    in_progress_at=_STAMP, expires_at=INTEGER, finalizing_at=_STAMP, completed_at=_STAMP,
    failed_at=_STAMP, expired_at=_STAMP, cancelling_at=_STAMP, cancelled_at=_STAMP,
    request_counts=record(total=INTEGER, completed=INTEGER, failed=INTEGER),
    metadata=nullable({"type": "object"}),
)  # fmt: skip
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _listed(item: JsonSchema) -> dict[str, Any]:
    return json_content(
        record(object={"const": "list"}, data=array(item), first_id=nullable(STRING),
               last_id=nullable(STRING), has_more={"type": "boolean"})
    )  # fmt: skip


def openapi_paths(limits: Limits) -> dict[str, dict[str, Any]]:
    def op(summary: str, ok: dict[str, Any], errors: list[int], **kwargs: Any) -> dict[str, Any]:
        return openapi.operation(
            summary, limits=limits, ok=ok, errors=[*errors, 501], tag="openai-batch", **kwargs
        )

    file = json_content(_FILE)
    batch = json_content(_BATCH)
    deleted = json_content(record(id=STRING, object={"const": "file"}, deleted={"const": True}))
    multipart = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": record(
                    purpose={"const": "batch"}, file={"type": "string", "format": "binary"}
                )
            }
        },
    }
    upload_op = op("Upload a JSONL file (purpose batch)", file, [408, 413, 415, 507])
    upload_op["requestBody"] = multipart
    raw = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "/v1/files": {"post": upload_op, "get": op("Files, newest first", _listed(_FILE), [])},
        "/v1/files/{id}": {
            "get": op("A file", file, [404], parameters=[_ID]),
            "delete": op("Delete a file", deleted, [404, 409], parameters=[_ID]),
        },
        "/v1/files/{id}/content": {"get": op("A file's bytes", raw, [404], parameters=[_ID])},
        "/v1/batches": {
            "post": op("Create a batch", batch, [404, 507], body=CREATE),
            "get": op("Batches, newest first", _listed(_BATCH), []),
        },
        "/v1/batches/{id}": {"get": op("A batch", batch, [404], parameters=[_ID])},
        "/v1/batches/{id}/cancel": {
            "post": op("Cancel a batch", batch, [404, 409], parameters=[_ID])
        },
    }
