"""The job framework: chunks and checkpoints, resume of a dead run, one run at a time."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from apps.batch import jobs as batch_jobs
from apps.batch.jobs import Job, JobAlreadyRunning, Param, Step, job_execute, register
from apps.batch.models import JobRun
from apps.common.exceptions import NotFound, ValidationFailed

CALLS: list[dict[str, Any]] = []


@register
class CountingJob(Job):
    """Counts to ``upto`` in chunks; records every step it runs."""

    name = "test_counting"
    queue = "ai.batch"
    params = {"upto": Param(int, 10), "chunk": Param(int, 3), "explode_at": Param(int, -1)}

    def total(self, *, params: dict[str, Any]) -> int | None:
        return params["upto"]

    def step(self, *, params: dict[str, Any], checkpoint: dict[str, Any], run: JobRun) -> Step:
        start = checkpoint.get("next", 0)
        end = min(start + params["chunk"], params["upto"])
        CALLS.append({"start": start, "end": end})
        if start <= params["explode_at"] < end:
            raise RuntimeError("boom")
        return Step(
            done=end - start,
            checkpoint={"next": end},
            finished=end >= params["upto"],
            result={"sum": sum(range(start, end))},
        )


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


def test_job_runs_in_chunks_and_records_progress(db):
    seen: list[int] = []

    run = job_execute(
        name="test_counting", params={"upto": "10", "chunk": 3}, on_progress=lambda r: seen.append(r.progress_done)
    )

    run.refresh_from_db()
    assert run.status == JobRun.Status.SUCCEEDED
    assert (run.progress_done, run.progress_total) == (10, 10)
    assert run.result == {"sum": 45}
    assert run.checkpoint == {"next": 10}
    assert run.parameters == {"upto": 10, "chunk": 3, "explode_at": -1, "pause_ms": 0}
    assert [c["start"] for c in CALLS] == [0, 3, 6, 9]
    assert seen == [0, 3, 6, 9, 10]
    assert run.finished_at is not None and run.resume_count == 0


def test_dead_run_is_resumed_from_its_checkpoint(db):
    # Given a run left "running" by a process that died after 2 chunks (nobody holds the lock)
    params = batch_jobs.job_get(name="test_counting").clean_params({"upto": 10, "chunk": 3})
    dead = JobRun.objects.create(
        job_name="test_counting",
        parameters=params,
        started_at=timezone.now(),
        progress_done=6,
        progress_total=10,
        checkpoint={"next": 6},
        result={"sum": 15},
    )

    run = job_execute(name="test_counting", params={"upto": 10, "chunk": 3})

    assert run.pk == dead.pk
    assert [c["start"] for c in CALLS] == [6, 9]  # nothing before the checkpoint is redone
    run.refresh_from_db()
    assert run.status == JobRun.Status.SUCCEEDED
    assert run.result == {"sum": 45}  # the same as an uninterrupted run
    assert (run.resume_count, run.resumed_from, run.progress_done) == (1, [6], 10)


def test_dead_run_with_other_parameters_is_closed_not_resumed(db):
    dead = JobRun.objects.create(
        job_name="test_counting", parameters={"upto": 99}, started_at=timezone.now(), checkpoint={"next": 50}
    )

    run = job_execute(name="test_counting", params={"upto": 4, "chunk": 4})

    dead.refresh_from_db()
    assert run.pk != dead.pk and run.status == JobRun.Status.SUCCEEDED
    assert dead.status == JobRun.Status.FAILED and "superseded" in dead.error
    assert [c["start"] for c in CALLS] == [0]


def _lock_from_another_connection(name: str) -> psycopg.Connection:
    settings = connection.settings_dict
    other = psycopg.connect(
        host=settings["HOST"] or "127.0.0.1",
        port=settings["PORT"] or 5432,
        user=settings["USER"] or "postgres",
        dbname=settings["NAME"],
        autocommit=True,
    )
    other.execute("SELECT pg_advisory_lock(%s, %s)", (batch_jobs.ADVISORY_NAMESPACE, batch_jobs._lock_key(name)))
    return other


def _close_and_wait_released(other: psycopg.Connection, name: str) -> None:
    """Close the other connection; its backend drops the lock as it exits, a moment later."""
    other.close()
    run = JobRun(job_name=name, status=JobRun.Status.RUNNING)
    deadline = time.monotonic() + 10
    while batch_jobs.job_run_is_live(run=run):
        assert time.monotonic() < deadline, "the lock outlived its connection"
        time.sleep(0.05)


def test_a_job_cannot_run_twice_at_once(db):
    # Given another process that is running the job (it holds the job's lock)
    other = _lock_from_another_connection("test_counting")
    try:
        with pytest.raises(JobAlreadyRunning) as info:
            job_execute(name="test_counting")
        assert info.value.status_code == 409 and info.value.code == "job_running"
        assert CALLS == [] and not JobRun.objects.exists()
    finally:
        _close_and_wait_released(other, "test_counting")
    # Once that process is gone (its connection closed), the job runs.
    assert job_execute(name="test_counting").status == JobRun.Status.SUCCEEDED


def test_the_database_refuses_a_second_running_row(db):
    JobRun.objects.create(job_name="x", started_at=timezone.now())
    with pytest.raises(IntegrityError), transaction.atomic():
        JobRun.objects.create(job_name="x", started_at=timezone.now())
    JobRun.objects.create(job_name="x", started_at=timezone.now(), status=JobRun.Status.SUCCEEDED)


def test_live_run_is_reported_live(db):
    run = JobRun.objects.create(job_name="test_counting", started_at=timezone.now())
    assert not batch_jobs.job_run_is_live(run=run)
    other = _lock_from_another_connection("test_counting")
    try:
        assert batch_jobs.job_run_is_live(run=run)
    finally:
        _close_and_wait_released(other, "test_counting")


def test_failure_marks_the_run_failed_keeps_the_checkpoint_and_releases_the_lock(db):
    with pytest.raises(RuntimeError):
        job_execute(name="test_counting", params={"explode_at": 4})
    run = JobRun.objects.get()
    assert run.status == JobRun.Status.FAILED and "boom" in run.error
    assert run.checkpoint == {"next": 3} and run.progress_done == 3
    other = _lock_from_another_connection("test_counting")  # the lock was released
    _close_and_wait_released(other, "test_counting")


@pytest.mark.parametrize(
    ("params", "message"),
    [({"nope": 1}, "Unknown parameters"), ({"upto": "ten"}, "must be int"), ({"upto": True}, "must be int")],
)
def test_bad_parameters_are_rejected_before_anything_runs(db, params, message):
    with pytest.raises(ValidationFailed, match=message):
        job_execute(name="test_counting", params=params)
    assert not JobRun.objects.exists() and CALLS == []


def test_unknown_job_is_not_found(db):
    with pytest.raises(NotFound):
        job_execute(name="no_such_job")
