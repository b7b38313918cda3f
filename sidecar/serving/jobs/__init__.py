"""Durable jobs (DESIGN section 13): bulk work that runs in the capacity interactive requests
leave, survives restarts, and never slows interactive traffic.

    states    the statuses and their transitions (the state machine)
    store     SQLite (WAL) and JSONL files in SIDECAR_JOBS_DIR; each transition one transaction
    runner    one job at a time, micro-batch by micro-batch, at the batcher's bulk priority
    jobs      the store on its own thread, the runner and retention, for the protocols

It knows no wire format: the protocols give the runner a `LineFormat` per job kind.
"""

from __future__ import annotations

from sidecar.serving.jobs.jobs import Jobs, Upload
from sidecar.serving.jobs.records import Job, StoredFile
from sidecar.serving.jobs.runner import INTERRUPTIONS, ItemError, LineFormat
from sidecar.serving.jobs.states import ACTIVE, TERMINAL, Status
from sidecar.serving.jobs.store import new_id

__all__ = [
    "ACTIVE",
    "INTERRUPTIONS",
    "TERMINAL",
    "ItemError",
    "Job",
    "Jobs",
    "LineFormat",
    "Status",
    "StoredFile",
    "Upload",
    "new_id",
]
