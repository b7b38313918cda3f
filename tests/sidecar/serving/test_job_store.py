"""The job store on a real directory: the state machine, exactly-once commits, recovery."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from sidecar.errors import ConfigError, JobConflictError, JobsLockedError, StorageFullError
from sidecar.jobs_settings import JobsSettings
from sidecar.serving.jobs import Job, Jobs, Status
from sidecar.serving.jobs.states import TERMINAL, TRANSITIONS
from sidecar.serving.jobs.store import JobStore, new_id


def make_job(kind: str = "job", total: int = 3) -> Job:
    job_id = new_id("job_")
    return Job(
        id=job_id, kind=kind, status=Status.QUEUED, endpoint="/v1/predict",
        created_at=time.time(), started_at=None, finalizing_at=None, cancelling_at=None,
        finished_at=None, total=total, completed=0, failed=0, next_index=0, input_offset=0,
        input_path=f"jobs/{job_id}/input", input_bytes=0, output_bytes=0, error_bytes=0,
        parameters="{}", metadata=None, callback_url=None, input_file_id=None,
        output_file_id=None, error_file_id=None, error=None, completion_window=None,
    )  # fmt: skip


def reach(store: JobStore, job_id: str, status: Status) -> None:
    """Walk a job from queued to `status` along allowed transitions."""
    paths = {
        Status.QUEUED: [],
        Status.RUNNING: [Status.RUNNING],
        Status.FINALIZING: [Status.RUNNING, Status.FINALIZING],
        Status.COMPLETED: [Status.RUNNING, Status.FINALIZING, Status.COMPLETED],
        Status.FAILED: [Status.FAILED],
        Status.CANCELLING: [Status.RUNNING, Status.CANCELLING],
        Status.CANCELLED: [Status.CANCELLED],
    }
    for step in paths[status]:
        store.transition(job_id, step)


@pytest.mark.parametrize("source", list(Status))
@pytest.mark.parametrize("target", list(Status))
def test_a_transition_happens_exactly_when_the_table_allows_it(
    tmp_path: Path, source: Status, target: Status
) -> None:
    store = JobStore.open(str(tmp_path), 1 << 30)
    job = store.create_job(make_job(), [b'"a"'])
    reach(store, job.id, source)
    if target in TRANSITIONS[source]:
        moved = store.transition(job.id, target)
        assert moved.status is target
        assert (moved.finished_at is not None) == (target in TERMINAL)
    else:
        with pytest.raises(JobConflictError):
            store.transition(job.id, target)
        assert store.job(job.id).status is source


def test_a_rerun_micro_batch_rewrites_the_same_bytes_and_nothing_else_is_read(
    tmp_path: Path,
) -> None:
    store = JobStore.open(str(tmp_path), 1 << 30)
    job = store.create_job(make_job(total=4), [b'"a"', b'"b"', b'"c"', b'"d"'])
    job = store.transition(job.id, Status.RUNNING)
    lines = store.read_lines(job, 0, 2)
    assert [line for line, _ in lines] == [b'"a"', b'"b"']
    job = store.commit_chunk(
        job, first_index=0, next_index=2, input_offset=lines[-1][1], output=b"r0\nr1\n",
        errors=b"", completed=2, failed=0,
    )  # fmt: skip
    assert job is not None and job.output_bytes == 6
    # A crash after the write of the next micro-batch, before its commit: bytes past the
    # committed length, which the resumed job rewrites.
    output = tmp_path / "jobs" / job.id / "output"
    with open(output, "ab") as f:
        f.write(b"half-written garbage")
    assert store.read_results(job, 0, 10) == b"r0\nr1\n"
    lines = store.read_lines(job, job.input_offset, 10)
    assert [line for line, _ in lines] == [b'"c"', b'"d"']
    # A stale commit (an old micro-batch again) is refused.
    stale = store.commit_chunk(
        job, first_index=0, next_index=2, input_offset=0, output=b"x\n", errors=b"",
        completed=1, failed=0,
    )  # fmt: skip
    assert stale is None
    job = store.commit_chunk(
        job, first_index=2, next_index=4, input_offset=lines[-1][1], output=b"r2\nr3\n",
        errors=b"", completed=1, failed=1,
    )  # fmt: skip
    assert job is not None
    store.transition(job.id, Status.FINALIZING)
    done = store.finish(job.id, Status.COMPLETED)
    assert output.read_bytes() == b"r0\nr1\nr2\nr3\n"
    assert (done.completed, done.failed, done.next_index) == (3, 1, 4)
    assert store.read_results(done, 1, 2) == b"r1\nr2\n"
    assert store.read_results(done, 3, 100) == b"r3\n"


def test_opening_finishes_cancelling_jobs_and_clears_cut_uploads(tmp_path: Path) -> None:
    store = JobStore.open(str(tmp_path), 1 << 30)
    job = store.create_job(make_job(kind="batch"), [b"{}"])
    reach(store, job.id, Status.CANCELLING)
    (tmp_path / "tmp" / "upload-x").write_bytes(b"partial")
    store.close()  # as a crash would leave it
    reopened = JobStore.open(str(tmp_path), 1 << 30)
    cancelled = reopened.job(job.id)
    assert cancelled.status is Status.CANCELLED
    # No line ran: no output file and no error file, as OpenAI's batches have none then.
    assert (cancelled.output_file_id, cancelled.error_file_id) == (None, None)
    assert not list((tmp_path / "tmp").iterdir())


def test_the_budget_and_retention(tmp_path: Path) -> None:
    store = JobStore.open(str(tmp_path), 100)
    with pytest.raises(StorageFullError):
        store.create_job(make_job(), [b"x" * 200])
    kept = store.create_job(make_job(), [b"x" * 10])
    old = store.create_job(make_job(), [b"x" * 10])
    store.transition(old.id, Status.CANCELLED)
    assert store.used_bytes() == 22
    assert store.sweep(time.time() + 1) == 1  # the finished job only
    assert [j.id for j in store.jobs_in(Status.QUEUED)] == [kept.id]
    assert not (tmp_path / "jobs" / old.id).exists()


def test_settings() -> None:
    allow = "HTTPS://Hooks.example.com:443/, http://127.0.0.1:9000"
    settings = JobsSettings.from_env(
        {
            "SIDECAR_JOBS_DIR": "/data",
            "SIDECAR_JOB_CALLBACK_ALLOW": allow,
            "SIDECAR_JOB_CALLBACK_SECRET_FILE": "/run/secrets/webhook",
        }
    )
    assert settings.callback_allow == ("https://hooks.example.com", "http://127.0.0.1:9000")
    assert settings.max_inputs == 100_000 and settings.retention_s == 86400
    for name, value in (
        ("SIDECAR_JOB_CALLBACK_ALLOW", "ftp://x"),
        ("SIDECAR_JOB_CALLBACK_ALLOW", "http://x/path"),
        ("SIDECAR_JOB_MAX_INPUTS", "0"),
        ("SIDECAR_JOBS_MAX_BYTES", "lots"),
        ("SIDECAR_JOB_RETENTION_S", "-1"),
    ):
        with pytest.raises(ConfigError, match=name):
            JobsSettings.from_env({name: value})


@pytest.mark.parametrize("end", sorted(TERMINAL))
def test_a_job_with_a_callback_owes_it_from_the_transaction_that_ends_it(
    tmp_path: Path, end: Status
) -> None:
    store = JobStore.open(str(tmp_path), 1 << 30)
    hooked = store.create_job(dataclasses.replace(make_job(), callback_url="http://h/x"), [b"1"])
    plain = store.create_job(make_job(), [b"1"])
    for job in (hooked, plain):
        reach(store, job.id, Status.RUNNING)
    assert store.owed_callbacks() == []  # nothing owed while they run
    for job in (hooked, plain):
        if end is Status.COMPLETED:
            store.transition(job.id, Status.FINALIZING)
            store.finish(job.id, Status.COMPLETED)
        elif end is Status.CANCELLED:
            store.transition(job.id, Status.CANCELLING)
            store.finish(job.id, Status.CANCELLED)
        else:
            store.transition(job.id, end)
    assert [job.id for job in store.owed_callbacks()] == [hooked.id]
    store.close()
    reopened = JobStore.open(str(tmp_path), 1 << 30)  # what a restart finds owed
    assert [job.id for job in reopened.owed_callbacks()] == [hooked.id]
    reopened.settle_callback(hooked.id)
    assert reopened.owed_callbacks() == []


def test_deleting_a_job_forgets_its_owed_callback(tmp_path: Path) -> None:
    store = JobStore.open(str(tmp_path), 1 << 30)
    job = store.create_job(dataclasses.replace(make_job(), callback_url="http://h/x"), [b"1"])
    store.transition(job.id, Status.CANCELLED)
    assert len(store.owed_callbacks()) == 1
    store.delete_job(job.id, "job")
    assert store.owed_callbacks() == []


def test_one_store_per_directory_until_it_is_closed(tmp_path: Path) -> None:
    store = JobStore.open(str(tmp_path), 1 << 30)
    with pytest.raises(JobsLockedError, match="another sidecar process holds the jobs directory"):
        JobStore.open(str(tmp_path), 1 << 30)
    store.close()
    JobStore.open(str(tmp_path), 1 << 30).close()


async def test_jobs_wait_for_the_directory_then_open_it_and_let_go_when_closed(
    tmp_path: Path,
) -> None:
    holder = JobStore.open(str(tmp_path), 1 << 30)  # another sidecar's store
    settings = JobsSettings.from_env({"SIDECAR_JOBS_DIR": str(tmp_path)})
    jobs = await Jobs.open(settings)
    with pytest.raises(JobsLockedError):
        await jobs.page("job", after=None, limit=10)
    holder.close()
    deadline = time.monotonic() + 5  # it tries again every LOCK_RETRY_S
    while True:
        try:
            assert await jobs.page("job", after=None, limit=10) == []
            break
        except JobsLockedError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    with pytest.raises(JobsLockedError):
        JobStore.open(str(tmp_path), 1 << 30)  # now it is the holder
    await jobs.close()
    JobStore.open(str(tmp_path), 1 << 30).close()  # and it let go


async def test_a_waiting_jobs_gives_up_saying_why_when_the_directory_goes_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "jobs"
    holder = JobStore.open(str(directory), 1 << 30)
    jobs = await Jobs.open(JobsSettings.from_env({"SIDECAR_JOBS_DIR": str(directory)}))
    directory.rename(tmp_path / "moved")
    directory.write_text("a file now")
    holder.close()
    for _ in range(100):  # it tries again every LOCK_RETRY_S
        if "the job store cannot be opened" in caplog.text:
            break
        await asyncio.sleep(0.05)
    assert "jobs stay off here" in caplog.text
    with pytest.raises(JobsLockedError):  # the job routes still say why they are off
        await jobs.page("job", after=None, limit=10)
    await jobs.close()
