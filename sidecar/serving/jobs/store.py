"""The durable job store: SQLite in WAL mode plus JSONL files, in SIDECAR_JOBS_DIR.

    lock                    held (flock) while a store is open: one sidecar per directory
    jobs.sqlite3            jobs, files, and the chunks of each job's results (offsets)
    files/<file id>         uploaded files (OpenAI `purpose: batch` input)
    jobs/<job id>/input     a native job's inputs, one JSON value a line
    jobs/<job id>/output    results (native: every line; OpenAI: the output file)
    jobs/<job id>/errors    OpenAI's error file

Exactly once after `kill -9`: a micro-batch's lines are written at the job's committed output
length (`os.pwrite`, so a rerun of the same micro-batch overwrites the same bytes) and synced,
then one transaction advances the job's input cursor, its output lengths and its counts. What a
crash leaves past the committed lengths is never read, rewritten by the resumed job, and cut at
finalization. Every status change is one transaction too (`transition`, `states`).

Not thread-safe: one thread (the `Jobs` store thread) makes every call; never the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from sidecar.errors import (
    JobConflictError,
    JobNotFoundError,
    StorageFullError,
    StoredFileNotFoundError,
)
from sidecar.serving.jobs import spool
from sidecar.serving.jobs.records import FILE_COLUMNS, JOB_COLUMNS, Job, StoredFile
from sidecar.serving.jobs.states import ACTIVE, STAMPS, TERMINAL, Status, sources

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, endpoint TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finalizing_at REAL, cancelling_at REAL,
    finished_at REAL, total INTEGER NOT NULL, completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, next_index INTEGER NOT NULL DEFAULT 0,
    input_offset INTEGER NOT NULL DEFAULT 0, input_path TEXT NOT NULL,
    input_bytes INTEGER NOT NULL DEFAULT 0, output_bytes INTEGER NOT NULL DEFAULT 0,
    error_bytes INTEGER NOT NULL DEFAULT 0, parameters TEXT NOT NULL DEFAULT '{}',
    metadata TEXT, callback_url TEXT, input_file_id TEXT, output_file_id TEXT,
    error_file_id TEXT, error TEXT, completion_window TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, purpose TEXT NOT NULL, filename TEXT NOT NULL, bytes INTEGER NOT NULL,
    created_at REAL NOT NULL, path TEXT NOT NULL, job_id TEXT, lines INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL, first_index INTEGER NOT NULL, output_offset INTEGER NOT NULL,
    PRIMARY KEY (job_id, first_index)
);
-- Jobs whose callback is owed: a job with a callback URL that ends gets a row in the very
-- transaction that ends it (whichever statement does), until its delivery is settled
-- (delivered or given up); a restart delivers what is still owed.
CREATE TABLE IF NOT EXISTS owed_callbacks (job_id TEXT PRIMARY KEY);
CREATE TRIGGER IF NOT EXISTS owe_callback AFTER UPDATE OF status ON jobs
WHEN NEW.callback_url IS NOT NULL AND NEW.status IN ('completed', 'failed', 'cancelled')
    AND OLD.status NOT IN ('completed', 'failed', 'cancelled')
BEGIN INSERT OR IGNORE INTO owed_callbacks VALUES (NEW.id); END;
CREATE TRIGGER IF NOT EXISTS forget_callback AFTER DELETE ON jobs
BEGIN DELETE FROM owed_callbacks WHERE job_id = OLD.id; END;
"""


class JobStore:
    """Jobs and files on disk. Open with `open`; see the module docstring."""

    def __init__(self, root: Path, db: sqlite3.Connection, max_bytes: int, lock: int) -> None:
        self.root = root
        self._db = db
        self.max_bytes = max_bytes
        self._lock = lock

    @classmethod
    def open(cls, directory: str, max_bytes: int) -> JobStore:
        """Open (or create) the store; jobs a crash left cancelling are cancelled.

        Raises:
            JobsLockedError: another process has the directory open (its lock is held until
                that process closes the store or exits, however it exits).
        """
        root = Path(directory)
        for sub in ("files", "jobs", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        lock = spool.lock(root / "lock")
        try:
            return cls._open(root, max_bytes, lock)
        except BaseException:
            os.close(lock)
            raise

    @classmethod
    def _open(cls, root: Path, max_bytes: int, lock: int) -> JobStore:
        db = sqlite3.connect(root / "jobs.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        store = cls(root, db, max_bytes, lock)
        for job in store.jobs_in(Status.CANCELLING):
            store.finish(job.id, Status.CANCELLED)
        for leftover in (root / "tmp").iterdir():  # uploads a crash cut short
            leftover.unlink(missing_ok=True)
        return store

    def close(self) -> None:
        """Close the database and let go of the directory."""
        self._db.close()
        os.close(self._lock)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- reading -----------------------------------------------------------------------------

    def job(self, job_id: str, kind: str | None = None) -> Job:
        row = self._db.execute(
            f"SELECT {','.join(JOB_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None or (kind is not None and row[1] != kind):
            raise JobNotFoundError(f"no {kind or 'job'} '{job_id[:64]}'")
        return _job(row)

    def jobs(self, kind: str, *, after: str | None, limit: int) -> list[Job]:
        """Newest first; `after`: the id of the last job of the previous page."""
        query = f"SELECT {','.join(JOB_COLUMNS)} FROM jobs WHERE kind = ?"
        args: list[Any] = [kind]
        if after is not None:
            query += " AND (created_at, id) < (SELECT created_at, id FROM jobs WHERE id = ?)"
            args.append(after)
        rows = self._db.execute(
            query + " ORDER BY created_at DESC, id DESC LIMIT ?", [*args, limit]
        )
        return [_job(row) for row in rows]

    def jobs_in(self, *statuses: Status) -> list[Job]:
        """Jobs in `statuses`, oldest first."""
        marks = ",".join("?" * len(statuses))
        rows = self._db.execute(
            f"SELECT {','.join(JOB_COLUMNS)} FROM jobs WHERE status IN ({marks})"
            " ORDER BY created_at, id",
            [str(s) for s in statuses],
        )
        return [_job(row) for row in rows]

    def file(self, file_id: str) -> StoredFile:
        row = self._db.execute(
            f"SELECT {','.join(FILE_COLUMNS)} FROM files WHERE id = ?", (file_id,)
        ).fetchone()
        if row is None:
            raise StoredFileNotFoundError(f"no file '{file_id[:64]}'")
        return StoredFile(*row)

    def files(self, purpose: str | None, *, after: str | None, limit: int) -> list[StoredFile]:
        query = f"SELECT {','.join(FILE_COLUMNS)} FROM files WHERE 1"
        args: list[Any] = []
        if purpose is not None:
            query += " AND purpose = ?"
            args.append(purpose)
        if after is not None:
            query += " AND (created_at, id) < (SELECT created_at, id FROM files WHERE id = ?)"
            args.append(after)
        rows = self._db.execute(
            query + " ORDER BY created_at DESC, id DESC LIMIT ?", [*args, limit]
        )
        return [StoredFile(*row) for row in rows]

    def status_counts(self) -> tuple[dict[str, int], int]:
        """Jobs by status, and the items of active jobs still to run."""
        counts = dict(self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"))
        marks = ",".join("?" * len(ACTIVE))
        backlog = self._db.execute(
            f"SELECT COALESCE(SUM(total - next_index), 0) FROM jobs WHERE status IN ({marks})",
            [str(s) for s in ACTIVE],
        ).fetchone()[0]
        return counts, int(backlog)

    def survey(
        self, stored: StoredFile, key: Callable[[bytes], str | None], limit: int
    ) -> spool.Survey:
        """Non-blank lines of a stored file, and its first repeated key (`spool.survey`)."""
        return spool.survey(self.root / stored.path, key, limit)

    def used_bytes(self) -> int:
        """Bytes the jobs and files hold (a job's output files count once, with the job)."""
        files = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM files WHERE job_id IS NULL")
        jobs = self._db.execute(
            "SELECT COALESCE(SUM(input_bytes + output_bytes + error_bytes), 0) FROM jobs"
        )
        return int(files.fetchone()[0]) + int(jobs.fetchone()[0])

    def read_lines(self, job: Job, offset: int, count: int) -> list[tuple[bytes, int]]:
        """Up to `count` non-blank lines of the job's input from byte `offset`, each with the
        offset just past it."""
        return spool.read_lines(self.root / job.input_path, offset, count)

    def read_results(self, job: Job, offset: int, limit: int) -> bytes:
        """Result lines `offset` to `offset + limit` of a native job, as committed."""
        row = self._db.execute(
            "SELECT first_index, output_offset FROM chunks WHERE job_id = ? AND first_index <= ?"
            " ORDER BY first_index DESC LIMIT 1",
            (job.id, offset),
        ).fetchone()
        if row is None or offset >= job.next_index:
            return b""
        path = self.root / "jobs" / job.id / "output"
        return spool.read_indexed(path, row, (offset, offset + limit), job.output_bytes)

    def read_file(self, stored: StoredFile, start: int, size: int) -> bytes:
        return spool.read_range(self.root / stored.path, start, min(size, stored.bytes - start))

    # -- writing -----------------------------------------------------------------------------

    def check_room(self, incoming: int) -> None:
        """Raise StorageFullError unless `incoming` more bytes fit the budget and the disk."""
        used = self.used_bytes()
        if used + incoming > self.max_bytes:
            raise StorageFullError(
                f"the jobs storage holds {used} of {self.max_bytes} bytes (SIDECAR_JOBS_MAX_BYTES);"
                f" {incoming} more do not fit: delete finished jobs or files, or wait for retention"
            )
        if shutil.disk_usage(self.root).free < incoming:
            raise StorageFullError("the jobs volume is full")

    def create_job(self, job: Job, inputs: list[bytes] | None) -> Job:
        """Store a new job; `inputs` (native jobs) are written to its input file first."""
        directory = self.root / "jobs" / job.id
        size = sum(len(line) + 1 for line in inputs or ())
        self.check_room(size)
        directory.mkdir(parents=True, exist_ok=True)
        if inputs is not None:
            spool.write_lines(directory / "input", inputs)
            job = dataclasses.replace(job, input_bytes=size)
        with self._tx() as db:
            db.execute(_insert("jobs", JOB_COLUMNS), [getattr(job, name) for name in JOB_COLUMNS])
        return self.job(job.id)

    def create_file(self, stored: StoredFile, upload: Path) -> StoredFile:
        """Move a finished upload into place and record it."""
        try:
            self.check_room(stored.bytes)
            (self.root / stored.path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(upload, self.root / stored.path)
        finally:
            upload.unlink(missing_ok=True)
        with self._tx() as db:
            db.execute(
                _insert("files", FILE_COLUMNS), [getattr(stored, name) for name in FILE_COLUMNS]
            )
        return stored

    def transition(self, job_id: str, to: Status, error: str | None = None) -> Job:
        """Move a job to `to` in one transaction, stamping the time.

        Raises:
            JobConflictError: its status does not lead to `to` (`states.TRANSITIONS`).
        """
        allowed = sources(to)
        stamp = STAMPS[to]
        with self._tx() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(f"no job '{job_id[:64]}'")
            if Status(row[0]) not in allowed:
                raise JobConflictError(f"the job is {row[0]}: it cannot become {to}")
            assignments = (
                "status = ?" + (f", {stamp} = ?" if stamp else "") + ", error = COALESCE(?, error)"
            )
            args: list[Any] = [str(to), *([time.time()] if stamp else []), error, job_id]
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", args)
        return self.job(job_id)

    def commit_chunk(
        self,
        job: Job,
        *,
        first_index: int,
        next_index: int,
        input_offset: int,
        output: bytes,
        errors: bytes,
        completed: int,
        failed: int,
    ) -> Job | None:
        """Write one micro-batch's lines and commit its progress; None if the job stopped
        running meanwhile (cancelled): nothing is committed then."""
        current = self.job(job.id)
        if current.status is not Status.RUNNING or current.next_index != first_index:
            return None
        directory = self.root / "jobs" / job.id
        for name, data, at in (
            ("output", output, current.output_bytes),
            ("errors", errors, current.error_bytes),
        ):
            if data:
                spool.write_at(directory / name, data, at)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?)",
                (job.id, first_index, current.output_bytes),
            )
            db.execute(
                "UPDATE jobs SET next_index = ?, input_offset = ?, output_bytes = output_bytes + ?,"
                " error_bytes = error_bytes + ?, completed = completed + ?, failed = failed + ?"
                " WHERE id = ? AND status = ? AND next_index = ?",
                (next_index, input_offset, len(output), len(errors), completed, failed,
                 job.id, str(Status.RUNNING), first_index),
            )  # fmt: skip
        return self.job(job.id)

    def finish(self, job_id: str, to: Status) -> Job:
        """Cut the job's files to their committed lengths, record a batch's as files (OpenAI's
        output and error files, each only when it holds lines: a batch with no failure has no
        error file, as OpenAI's has not), and move the job to `to`: one transaction."""
        job = self.job(job_id)
        directory = self.root / "jobs" / job_id
        for name, size in (("output", job.output_bytes), ("errors", job.error_bytes)):
            spool.cut(directory / name, size)
        if Status(job.status) not in sources(to):
            raise JobConflictError(f"the job is {job.status}: it cannot become {to}")
        file_ids: list[str | None] = [None, None]
        with self._tx() as db:
            if job.kind == "batch":
                now = time.time()
                for index, (name, size) in enumerate(
                    (("output", job.output_bytes), ("errors", job.error_bytes))
                ):
                    if size == 0:
                        continue
                    file_ids[index] = file_id = new_id("file-")
                    db.execute(
                        "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                        (file_id, "batch_output", f"{job_id}_{name}.jsonl", size, now,
                         f"jobs/{job_id}/{name}", job_id),
                    )  # fmt: skip
                db.execute(
                    "UPDATE jobs SET output_file_id = ?, error_file_id = ? WHERE id = ?",
                    (*file_ids, job_id),
                )
            db.execute(
                "UPDATE jobs SET status = ?, finished_at = ? WHERE id = ?",
                (str(to), time.time(), job_id),
            )
        return self.job(job_id)

    def owed_callbacks(self) -> list[Job]:
        """Ended jobs whose callback is not settled yet, oldest first."""
        rows = self._db.execute(
            f"SELECT {','.join('j.' + c for c in JOB_COLUMNS)} FROM jobs j"
            " JOIN owed_callbacks o ON o.job_id = j.id ORDER BY j.finished_at"
        ).fetchall()
        return [_job(row) for row in rows]

    def settle_callback(self, job_id: str) -> None:
        """The job's callback was delivered, or given up: a restart sends it no more."""
        with self._tx() as db:
            db.execute("DELETE FROM owed_callbacks WHERE job_id = ?", (job_id,))

    def delete_job(self, job_id: str, kind: str) -> None:
        job = self.job(job_id, kind)
        if job.status in ACTIVE:
            raise JobConflictError(f"the job is {job.status}: cancel it first")
        with self._tx() as db:
            db.execute("DELETE FROM chunks WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM files WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(self.root / "jobs" / job_id, ignore_errors=True)

    def delete_file(self, file_id: str) -> None:
        stored = self.file(file_id)
        busy = self._db.execute(
            f"SELECT 1 FROM jobs WHERE input_file_id = ? AND status IN ({_marks(ACTIVE)})",
            (file_id, *map(str, ACTIVE)),
        ).fetchone()
        if busy:
            raise JobConflictError("a batch that is not finished reads this file")
        with self._tx() as db:
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        if stored.job_id is None:
            (self.root / stored.path).unlink(missing_ok=True)

    def sweep(self, older_than: float) -> int:
        """Delete finished jobs and uploaded files older than `older_than` (epoch seconds)."""
        marks = ",".join("?" * len(TERMINAL))
        old_jobs = self._db.execute(
            f"SELECT id, kind FROM jobs WHERE status IN ({marks}) AND finished_at < ?",
            (*map(str, TERMINAL), older_than),
        ).fetchall()
        for job_id, kind in old_jobs:
            self.delete_job(job_id, kind)
        old_files = self._db.execute(
            "SELECT id FROM files WHERE job_id IS NULL AND created_at < ?", (older_than,)
        ).fetchall()
        removed = len(old_jobs)
        for (file_id,) in old_files:
            with contextlib.suppress(JobConflictError):
                self.delete_file(file_id)
                removed += 1
        return removed


def _insert(table: str, columns: list[str]) -> str:
    return f"INSERT INTO {table} ({','.join(columns)}) VALUES ({_marks(columns)})"


def _marks(values: Collection[object]) -> str:
    return ",".join("?" * len(values))


def new_id(prefix: str) -> str:
    """A new random id: `prefix` and 24 hex digits."""
    return prefix + uuid.uuid4().hex[:24]


def _job(row: tuple[Any, ...]) -> Job:
    values = dict(zip(JOB_COLUMNS, row, strict=True))
    values["status"] = Status(values["status"])
    return Job(**values)
