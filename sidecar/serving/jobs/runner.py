"""The job runner: micro-batch by micro-batch, at the batcher's bulk priority, one job at a time
in turns: while other jobs wait, a job runs `TURN` micro-batches and the one that ran least
recently goes next (a new job first), so a small job submitted behind a large one starts within
one turn, not after it; a job alone runs on without turns.

A micro-batch is up to `CHUNK` input lines: each runs through its job's `LineFormat` (the
protocol's translation of a line into an engine call and of the outcome into an output line)
concurrently, so the batcher groups them; then their lines and the job's progress are committed
together (`JobStore.commit_chunk`). A line that fails (malformed, refused by the model) becomes
its error line; the job goes on. An interruption (the engine stopping or failing) drops the
micro-batch uncommitted: it runs again when the engine serves again, or after a restart.

Cancelling a running job cancels its micro-batch: items not yet in a forward pass never run
(the batcher withdraws them), and the results of that micro-batch are not committed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from batching import BatcherClosedError, DeviceFailedError
from sidecar.errors import JobConflictError, UnavailableError
from sidecar.serving.jobs.records import Job
from sidecar.serving.jobs.states import Status
from sidecar.serving.jobs.store import JobStore

logger = logging.getLogger(__name__)

T = TypeVar("T")
CHUNK = 256  # input lines per micro-batch: enough for the batcher to group lengths
AHEAD = 2  # micro-batches running at once
TURN = 8  # micro-batches a job runs before the next job waiting has its turn
INTERRUPTIONS = (BatcherClosedError, DeviceFailedError, UnavailableError)
RETRY_S = 1.0  # after an interruption, the wait before the micro-batch runs again
_SMOOTHING = 0.3  # weight of the newest micro-batch in the drain rate


@dataclass(frozen=True)
class ItemError:
    """Why one line failed, as its error line says it."""

    status: int
    code: str
    message: str


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


@dataclass
class _Chunk:
    """A micro-batch: its first index, its lines (each with the input offset past it), and
    the outcomes of its items as they run."""

    first: int
    lines: list[tuple[bytes, int]]
    outcomes: asyncio.Future[list[Any]]


class LineFormat(Protocol):
    """A protocol's job lines: what a line asks, and what its output line says.

    `errors_apart`: error lines go to the job's error file (OpenAI's), not among the results.
    """

    errors_apart: bool

    async def run(self, job: Job, line: bytes, index: int) -> tuple[bool, bytes]:
        """Run input line `index`: (succeeded, its output line without the newline).

        Raises:
            Exception: the line fails (its error line is `failure`'s), or an INTERRUPTION.
        """

    def failure(self, job: Job, line: bytes, index: int, error: ItemError) -> bytes:
        """The error line of input line `index`."""


class StoreCall(Protocol):
    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]: ...


class JobRunner:
    """Runs stored jobs; see the module docstring.

    Args:
        call: runs a `JobStore` method on the store thread.
        store: the store (only ever touched through `call`).
        formats: the line format of each job kind.
        describe: an exception's status, code and message (the API's error table).
        changed: called with a job after each change of its status or progress.
        on_items: called with the items completed and failed by each micro-batch.
    """

    def __init__(
        self,
        call: StoreCall,
        store: JobStore,
        formats: Mapping[str, LineFormat],
        describe: Callable[[BaseException], ItemError],
        *,
        changed: Callable[[Job], None],
        on_items: Callable[[int, int], None],
    ) -> None:
        self._call = call
        self._store = store
        self._formats = formats
        self._describe = describe
        self._changed = changed
        self._on_items = on_items
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._current: str | None = None
        self._chunks: deque[_Chunk] = deque()  # the micro-batches of the job running
        self._rates: dict[str, float] = {}  # items per second of each job in its turns, smoothed
        self._turns: dict[str, float] = {}  # when each job's latest turn ended
        self._taking_turns = 1  # jobs active at the latest pick

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="job-runner")

    async def stop(self) -> None:
        """Stop at once: the micro-batch in flight is dropped, uncommitted."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        """A job was submitted or changed."""
        self._wake.set()

    def estimated_completion(self, job: Job) -> float | None:
        """When the job should be done (epoch seconds), from the measured drain rate; None
        when it is not running or nothing was measured yet."""
        rate = self._rates.get(job.id, 0.0) / self._taking_turns  # jobs share the device
        if job.status is not Status.RUNNING or rate <= 0:
            return None
        return time.time() + (job.total - job.next_index) / rate

    async def cancel(self, job_id: str, kind: str) -> Job:
        """Cancel a job: a queued one at once, a running one once its micro-batch stopped.

        Raises:
            JobConflictError: the job is finished already.
        """
        job = await self._call(self._store.job, job_id, kind)
        if job.status is Status.QUEUED:
            job = await self._call(self._store.finish, job_id, Status.CANCELLED)
        elif job.status is Status.RUNNING:
            job = await self._call(self._store.transition, job_id, Status.CANCELLING)
            if self._current == job_id:
                for chunk in self._chunks:
                    chunk.outcomes.cancel()
        elif job.status is not Status.CANCELLING:
            await self._call(self._store.transition, job_id, Status.CANCELLING)  # raises
        self._changed(job)
        self.wake()
        return job

    # -- the loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            active = await self._call(
                self._store.jobs_in,
                Status.CANCELLING, Status.FINALIZING, Status.RUNNING, Status.QUEUED,
            )  # fmt: skip
            if not active:
                await self._wake.wait()
                continue
            # Finish what is ending first (cancelling, finalizing); then the job that ran least
            # recently: one not run yet (a restart's running jobs, then queued ones, oldest
            # first), else the one whose turn ended longest ago.
            order = (Status.CANCELLING, Status.FINALIZING, Status.RUNNING, Status.QUEUED)
            job = min(
                active,
                key=lambda j: (
                    order.index(j.status) if j.status in order[:2] else 2,
                    self._turns.get(j.id, -math.inf),
                    order.index(j.status),
                    j.created_at,
                ),
            )
            self._taking_turns = len(active)
            try:
                await self._advance(job, others=len(active) > 1)
            except INTERRUPTIONS as exc:
                logger.info("job %s waits: the engine is not serving (%s)", job.id, exc)
                await asyncio.sleep(RETRY_S)
            except JobConflictError:
                continue  # a cancel changed its status meanwhile: read it again
            except OSError as exc:
                logger.error("job %s failed: %s", job.id, exc)
                await self._fail(job, "the job's files could not be read or written")
                await asyncio.sleep(RETRY_S)  # a job that cannot even fail is not spun on
            except Exception:
                logger.exception("job %s failed", job.id)
                await self._fail(job, "internal error")
                await asyncio.sleep(RETRY_S)

    async def _advance(self, job: Job, *, others: bool) -> None:
        """Run the job's turn (`others`: other jobs wait for theirs), then end the job if its
        input ran out or it was cancelled."""
        store, call = self._store, self._call
        if job.status is Status.QUEUED:
            job = await call(store.transition, job.id, Status.RUNNING)
            self._changed(job)
        if job.status is Status.RUNNING:
            job, turn_over = await self._run(job, others)
            self._turns[job.id] = time.monotonic()
            if turn_over:
                return  # the loop picks the job whose turn is next
        if job.status is Status.RUNNING:  # every line ran
            job = await call(store.transition, job.id, Status.FINALIZING)
            self._changed(job)
        if job.status is Status.FINALIZING:
            job = await call(store.finish, job.id, Status.COMPLETED)
        elif job.status is Status.CANCELLING:
            job = await call(store.finish, job.id, Status.CANCELLED)
        self._changed(job)
        self._forget(job.id)

    def _forget(self, job_id: str) -> None:
        """The job ended: its turn and rate go."""
        self._turns.pop(job_id, None)
        self._rates.pop(job_id, None)

    async def _fail(self, job: Job, message: str) -> None:
        self._forget(job.id)
        try:
            failed = await self._call(
                self._store.transition, job.id, Status.FAILED, f'{{"message": "{message}"}}'
            )
        except Exception:
            logger.exception("job %s could not be marked failed", job.id)
            return
        self._changed(failed)

    async def _run(self, job: Job, others: bool) -> tuple[Job, bool]:
        """Run micro-batches until the input ends, the job stops running or its turn is over
        (`TURN` micro-batches started while `others` wait, or a job was submitted meanwhile);
        the job then, and whether its turn ended with input left.

        `AHEAD` micro-batches run at once, so the bulk lane never runs dry while one commits;
        they commit in input order.
        """
        line_format = self._formats[job.kind]
        self._current = job.id
        self._chunks = pending = deque[_Chunk]()
        offset, index, began = job.input_offset, job.next_index, time.monotonic()
        started = 0
        try:
            while True:
                while len(pending) < AHEAD:
                    if started >= TURN and (others or self._wake.is_set()):
                        if not pending:
                            return job, True
                        break
                    started += 1
                    lines = await self._call(self._store.read_lines, job, offset, CHUNK)
                    if not lines:
                        break
                    runs = (
                        self._item(line_format, job, line, index + i)
                        for i, (line, _) in enumerate(lines)
                    )
                    running = asyncio.gather(*runs, return_exceptions=True)
                    # A cancelled gather may end with CancelledError set: never left unread.
                    running.add_done_callback(_retrieve)
                    pending.append(_Chunk(index, lines, running))
                    index, offset = index + len(lines), lines[-1][1]
                if not pending:
                    return job, False
                chunk = pending[0]
                try:
                    outcomes = await chunk.outcomes
                except asyncio.CancelledError:
                    if self._task is not None and self._task.cancelling():
                        raise  # the runner stops
                    return await self._call(self._store.job, job.id), False  # cancelled
                pending.popleft()
                committed = await self._commit(job, line_format, chunk, outcomes)
                if committed is None:  # cancelled while the micro-batch ran
                    return await self._call(self._store.job, job.id), False
                now = time.monotonic()
                rate, began = len(chunk.lines) / max(now - began, 1e-6), now
                last = self._rates.get(job.id, 0.0)
                self._rates[job.id] = rate if last == 0 else last + _SMOOTHING * (rate - last)
                job = committed
                self._changed(job)
        finally:
            for chunk in pending:
                chunk.outcomes.cancel()
            self._current = None
            self._chunks = deque()

    async def _commit(
        self, job: Job, line_format: LineFormat, chunk: _Chunk, outcomes: list[Any]
    ) -> Job | None:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        done = cast(list[tuple[bool, bytes]], outcomes)
        apart = line_format.errors_apart
        output = b"".join(line + b"\n" for ok, line in done if ok or not apart)
        errors = b"".join(line + b"\n" for ok, line in done if apart and not ok)
        completed = sum(1 for ok, _ in done if ok)
        failed = len(done) - completed
        committed = await self._call(
            self._store.commit_chunk,
            job,
            first_index=chunk.first,
            next_index=chunk.first + len(done),
            input_offset=chunk.lines[-1][1],
            output=output,
            errors=errors,
            completed=completed,
            failed=failed,
        )
        if committed is not None:
            self._on_items(completed, failed)
        return committed

    async def _item(
        self, line_format: LineFormat, job: Job, line: bytes, index: int
    ) -> tuple[bool, bytes]:
        try:
            return await line_format.run(job, line, index)
        except INTERRUPTIONS:
            raise
        except Exception as exc:
            return False, line_format.failure(job, line, index, self._describe(exc))
