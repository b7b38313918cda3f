"""A job's statuses and the transitions between them: the one state machine of jobs.

    queued ──> running ──> finalizing ──> completed
      │          │  └────> failed <──────┘
      │          └──> cancelling ──> cancelled
      └──────────────────────────────^ (cancelled before it ran; or failed: unreadable input)

Every transition is one SQLite transaction (`store.JobStore.transition`): a status changes
only from one its table allows, together with the timestamp of the new status. After a restart,
`running` and `finalizing` jobs resume, `cancelling` ones finish cancelling. OpenAI's batch
statuses are a view of these (`validating` for `queued`, `in_progress` for `running`).
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED}),
    Status.RUNNING: frozenset({Status.FINALIZING, Status.CANCELLING, Status.FAILED}),
    Status.FINALIZING: frozenset({Status.COMPLETED, Status.FAILED}),
    Status.CANCELLING: frozenset({Status.CANCELLED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}
TERMINAL = frozenset(status for status, nexts in TRANSITIONS.items() if not nexts)
ACTIVE = frozenset(Status) - TERMINAL
# The column that records when a job entered each status (None: none kept).
STAMPS: dict[Status, str | None] = {
    Status.QUEUED: None,
    Status.RUNNING: "started_at",
    Status.FINALIZING: "finalizing_at",
    Status.COMPLETED: "finished_at",
    Status.FAILED: "finished_at",
    Status.CANCELLING: "cancelling_at",
    Status.CANCELLED: "finished_at",
}


def sources(target: Status) -> frozenset[Status]:
    """The statuses a job may move to `target` from."""
    return frozenset(status for status, nexts in TRANSITIONS.items() if target in nexts)
