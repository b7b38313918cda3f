"""Jobs as the protocols see them: the store on its own thread, the runner, retention.

Every store call runs on one thread of its own (SQLite and file I/O never block the event
loop); the runner and the API routes share it, so calls are serialised.

One sidecar per jobs directory: the store holds the directory's lock. A sidecar that finds it
held (another pod on a shared volume, or the old pod of a rollout still draining) serves
interactive traffic as usual, answers the job routes 503 `jobs_locked`, and tries again every
`LOCK_RETRY_S`: once the other lets go, it opens the store and runs (resumes) the jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

from sidecar.errors import JobsLockedError, NotReadyError, StartupError
from sidecar.jobs_settings import JobsSettings
from sidecar.serving.jobs import spool
from sidecar.serving.jobs.records import Job, StoredFile
from sidecar.serving.jobs.runner import ItemError, JobRunner, LineFormat
from sidecar.serving.jobs.states import TERMINAL, Status
from sidecar.serving.jobs.store import JobStore, new_id

logger = logging.getLogger(__name__)

T = TypeVar("T")
ITEM_OUTCOMES = ("completed", "failed")
LOCK_RETRY_S = 1.0  # how often a sidecar that found the directory locked tries again


class Jobs:
    """The job store, its thread, the runner and the retention sweep. Build with `open`."""

    def __init__(self, settings: JobsSettings, thread: ThreadPoolExecutor) -> None:
        self.settings = settings
        self._store: JobStore | None = None  # None while another process holds the directory
        self._thread = thread
        self._runner: JobRunner | None = None
        self._started: tuple[Mapping[str, LineFormat], Callable[[BaseException], ItemError]] | None
        self._started = None
        self._ended: Callable[[Job], None] | None = None
        self._sweeping: asyncio.Task[None] | None = None
        self._owed: asyncio.Task[None] | None = None
        self._waiting: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._submitting = asyncio.Semaphore(1)  # job bodies held in memory: one at a time
        # Read by the metrics at scrape time (plain values: another thread reads them).
        self.counts: dict[str, int] = {}
        self.backlog = 0
        self.items = dict.fromkeys(ITEM_OUTCOMES, 0)

    @classmethod
    async def open(cls, settings: JobsSettings) -> Jobs:
        """Open the store in `settings.dir` (jobs left cancelling by a crash are cancelled), or,
        while another process holds the directory, keep trying in the background.

        Raises:
            StartupError: the directory cannot hold the store (missing parent, read-only...).
        """
        jobs = cls(settings, ThreadPoolExecutor(1, thread_name_prefix="job-store"))
        try:
            opened = await jobs._try_open()
        except (OSError, sqlite3.Error) as exc:
            jobs._thread.shutdown(wait=False)
            raise StartupError(
                f"SIDECAR_JOBS_DIR={settings.dir}: the job store cannot be opened there ({exc})"
            ) from None
        if not opened:
            logger.warning(
                "another sidecar process holds the jobs directory %s: the job routes answer"
                " 503 jobs_locked until it lets go, then its jobs run here", settings.dir,
            )  # fmt: skip
            jobs._waiting = asyncio.create_task(jobs._wait_open(), name="jobs-directory-lock")
        return jobs

    async def _try_open(self) -> bool:
        assert self.settings.dir is not None
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(
            self._thread, JobStore.open, self.settings.dir, self.settings.max_bytes
        )
        try:
            self._store = await asyncio.shield(opening)
        except JobsLockedError:
            return False
        except asyncio.CancelledError:  # stopped meanwhile: a store it opened lets go
            with contextlib.suppress(Exception):
                store = await opening
                await self.call(store.close)
            raise
        await self._count()
        return True

    async def _wait_open(self) -> None:
        opened = False
        while not opened:
            await asyncio.sleep(LOCK_RETRY_S)
            try:
                opened = await self._try_open()
            except (OSError, sqlite3.Error) as exc:  # the directory went bad meanwhile
                logger.error("the job store cannot be opened: %s; jobs stay off here", exc)
                return
        logger.info("the jobs directory %s is ours now: jobs run here", self.settings.dir)
        if self._started is not None:
            self._start_running()

    def start(
        self,
        formats: Mapping[str, LineFormat],
        describe: Callable[[BaseException], ItemError],
        ended: Callable[[Job], None] | None = None,
    ) -> None:
        """Start running jobs (those a restart left running resume) and the retention sweep;
        `ended` is called with each job that ends (for its callback), and at once with each
        ended job whose callback a restart left owed (`settle_callback` clears it). While
        another process holds the directory, they start once it lets go."""
        self._started, self._ended = (formats, describe), ended
        if self._store is not None:
            self._start_running()

    def _start_running(self) -> None:
        assert self._started is not None
        formats, describe = self._started
        self._runner = JobRunner(
            self.call, self.store, formats, describe, changed=self._on_change,
            on_items=self._on_items,
        )  # fmt: skip
        self._runner.start()
        self._sweeping = asyncio.create_task(self._sweep_loop(), name="job-retention")
        if self._ended is not None:
            self._owed = asyncio.create_task(self._deliver_owed(self._ended), name="owed-callbacks")

    async def _deliver_owed(self, ended: Callable[[Job], None]) -> None:
        for job in await self.call(self.store.owed_callbacks):
            ended(job)

    async def settle_callback(self, job_id: str) -> None:
        """A job's callback was delivered or given up (`JobStore.settle_callback`)."""
        await self.call(self.store.settle_callback, job_id)

    async def stop(self) -> None:
        """Stop the runner (its micro-batch in flight runs again after a restart) and the
        retention sweep; the routes still read the store until `close`."""
        if self._runner is not None:
            await self._runner.stop()
        for task in (self._waiting, self._sweeping, self._owed):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """`stop`, and close the store and its thread."""
        await self.stop()
        if self._store is not None:
            with contextlib.suppress(RuntimeError):
                await self.call(self._store.close)
        self._thread.shutdown(wait=False)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store method on the store thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    @property
    def store(self) -> JobStore:
        """The store, whose methods go through `call`.

        Raises:
            JobsLockedError: another process holds the jobs directory.
        """
        if self._store is None:
            raise JobsLockedError(spool.LOCKED)
        return self._store

    # -- jobs --------------------------------------------------------------------------------

    @property
    def submitting(self) -> asyncio.Semaphore:
        """Held while a job body is read and stored, so one is in memory at a time."""
        return self._submitting

    async def submit(
        self,
        kind: str,
        endpoint: str,
        *,
        inputs: list[bytes] | None = None,
        input_file: StoredFile | None = None,
        total: int,
        parameters: str = "{}",
        metadata: str | None = None,
        callback_url: str | None = None,
        completion_window: str | None = None,
        failure: str | None = None,
    ) -> Job:
        """Store a new job and queue it: a native one with its `inputs` (one line each), an
        OpenAI batch over an uploaded `input_file` of `total` lines. With `failure` (an error
        object, JSON) the job is stored failed instead, never run: its input failed validation.

        Raises:
            StorageFullError: the disk budget has no room for it.
        """
        job_id = new_id("job_" if kind == "job" else "batch_")
        now = time.time()
        job = Job(
            id=job_id, kind=kind, status=Status.FAILED if failure else Status.QUEUED,
            endpoint=endpoint, created_at=now, started_at=None, finalizing_at=None,
            cancelling_at=None, finished_at=now if failure else None,
            total=total, completed=0, failed=0, next_index=0, input_offset=0,
            input_path=f"jobs/{job_id}/input" if input_file is None else input_file.path,
            input_bytes=0, output_bytes=0, error_bytes=0, parameters=parameters,
            metadata=metadata, callback_url=callback_url,
            input_file_id=None if input_file is None else input_file.id, output_file_id=None,
            error_file_id=None, error=failure, completion_window=completion_window,
        )  # fmt: skip
        if input_file is not None:
            await self.call(self.store.check_room, input_file.bytes)
        created = await self.call(self.store.create_job, job, inputs)
        self._on_change(created)
        if self._runner is not None:
            self._runner.wake()
        return created

    async def get(self, job_id: str, kind: str) -> Job:
        """Raises JobNotFoundError."""
        return await self.call(self.store.job, job_id, kind)

    async def page(self, kind: str, *, after: str | None, limit: int) -> list[Job]:
        return await self.call(self.store.jobs, kind, after=after, limit=limit)

    async def results(self, job: Job, offset: int, limit: int) -> bytes:
        return await self.call(self.store.read_results, job, offset, limit)

    async def delete(self, job_id: str, kind: str) -> None:
        """Raises JobNotFoundError, JobConflictError (not finished)."""
        await self.call(self.store.delete_job, job_id, kind)
        await self._notify()

    async def cancel(self, job_id: str, kind: str) -> Job:
        if self._runner is None:
            self.store  # noqa: B018 -- raises JobsLockedError while the directory is another's
            raise NotReadyError("jobs start once the model is loaded")
        return await self._runner.cancel(job_id, kind)

    def estimated_completion(self, job: Job) -> float | None:
        return None if self._runner is None else self._runner.estimated_completion(job)

    async def wait_change(self, timeout_s: float) -> None:
        """Return after the next change of any job, or after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with self._changed, asyncio.timeout(timeout_s):
                await self._changed.wait()

    # -- files -------------------------------------------------------------------------------

    async def upload(self) -> Upload:
        """A new upload, written on the store thread to a temporary file."""
        path = self.store.root / "tmp" / new_id("upload-")
        handle: IO[bytes] = await self.call(path.open, "wb")
        return Upload(self, path, handle)

    async def file(self, file_id: str) -> StoredFile:
        """Raises StoredFileNotFoundError."""
        return await self.call(self.store.file, file_id)

    async def files(
        self, purpose: str | None, *, after: str | None, limit: int
    ) -> list[StoredFile]:
        return await self.call(self.store.files, purpose, after=after, limit=limit)

    async def file_bytes(self, stored: StoredFile, start: int, size: int) -> bytes:
        return await self.call(self.store.read_file, stored, start, size)

    async def survey(self, stored: StoredFile, key: Callable[[bytes], str | None]) -> spool.Survey:
        """A stored file's non-blank lines, and the first whose `key` repeats an earlier
        line's (among the first `max_inputs`, past which a batch is refused anyway)."""
        return await self.call(self.store.survey, stored, key, self.settings.max_inputs)

    async def delete_file(self, file_id: str) -> None:
        """Raises StoredFileNotFoundError, JobConflictError (an unfinished batch reads it)."""
        await self.call(self.store.delete_file, file_id)

    async def check_room(self, incoming: int) -> None:
        """Raises StorageFullError when `incoming` bytes more do not fit."""
        await self.call(self.store.check_room, incoming)

    # -- bookkeeping -------------------------------------------------------------------------

    def _on_change(self, job: Job) -> None:
        if self._ended is not None and job.status in TERMINAL:
            self._ended(job)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        await self._count()
        async with self._changed:
            self._changed.notify_all()

    async def _count(self) -> None:
        if self._store is None:
            return
        with contextlib.suppress(RuntimeError):  # the thread is gone: closing
            self.counts, self.backlog = await self.call(self._store.status_counts)

    def _on_items(self, completed: int, failed: int) -> None:
        self.items["completed"] += completed
        self.items["failed"] += failed

    async def _sweep_loop(self) -> None:
        retention_s = self.settings.retention_s
        while True:
            try:
                removed = await self.call(self.store.sweep, time.time() - retention_s)
                if removed:
                    logger.info("retention: removed %d jobs and files", removed)
                    await self._notify()
            except Exception:
                logger.exception("the retention sweep failed")
            await asyncio.sleep(min(max(retention_s / 4, 1.0), 300.0))


class Upload:
    """A file being uploaded: chunks written off the loop, then stored (or abandoned)."""

    def __init__(self, jobs: Jobs, path: Path, handle: IO[bytes]) -> None:
        self._jobs = jobs
        self._path = path
        self._handle = handle
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        await self._jobs.call(self._handle.write, chunk)
        self.size += len(chunk)

    async def store(self, purpose: str, filename: str) -> StoredFile:
        """Keep the upload as a file.

        Raises:
            StorageFullError: the disk budget has no room for it (the upload is removed).
        """
        await self._jobs.call(self._handle.close)
        file_id = new_id("file-")
        stored = StoredFile(
            file_id, purpose, filename, self.size, time.time(), f"files/{file_id}", None, 0
        )
        return await self._jobs.call(self._jobs.store.create_file, stored, self._path)

    async def abandon(self) -> None:
        await self._jobs.call(self._handle.close)
        await self._jobs.call(self._path.unlink, missing_ok=True)


__all__ = ["Job", "Jobs", "Status", "StoredFile", "Upload"]
