"""A stored job and a stored file, as their rows read."""

from __future__ import annotations

from dataclasses import dataclass, fields

from sidecar.serving.jobs.states import Status


@dataclass(frozen=True)
class Job:
    """A job's row; `parameters`, `metadata` and `error` are JSON text."""

    id: str
    kind: str  # "job" (native) or "batch" (OpenAI)
    status: Status
    endpoint: str
    created_at: float
    started_at: float | None
    finalizing_at: float | None
    cancelling_at: float | None
    finished_at: float | None
    total: int
    completed: int
    failed: int
    next_index: int
    input_offset: int
    input_path: str
    input_bytes: int
    output_bytes: int
    error_bytes: int
    parameters: str
    metadata: str | None
    callback_url: str | None
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    error: str | None
    completion_window: str | None


@dataclass(frozen=True)
class StoredFile:
    id: str
    purpose: str
    filename: str
    bytes: int
    created_at: float
    path: str
    job_id: str | None  # an output file of this job (its bytes count with the job's)
    lines: int


JOB_COLUMNS = [f.name for f in fields(Job)]
FILE_COLUMNS = [f.name for f in fields(StoredFile)]
