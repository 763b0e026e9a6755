"""Task wrappers that run batch jobs on ``ai.batch`` and ``maintenance``.

Each task validates nothing itself: it hands ``params`` to the job runner
(``apps.batch.jobs.job_execute``). Beat sends them with the kwargs stored in
its ``PeriodicTask`` rows, e.g. ``{"trigger": "beat", "params": {"idle_minutes": 30}}``.

- A job already running elsewhere: ignored (acked). Beat fires again later.
- Bad parameters: a permanent failure, dead-lettered with the reason.
- Database errors: retried with backoff; the run resumes from its checkpoint.
- The job's lock connection died mid-run (``JobLockLost``): retried the same
  way; the retry re-acquires the lock and resumes, or finds another runner
  holding it and stands down (``JobAlreadyRunning``).
- A worker killed mid-job: the message is redelivered (late acks) and the
  next attempt resumes the dead run from its checkpoint.

Every attempt records its outcome and run time, and a run skipped because the
job is already running is logged and counted (``workers/batch/metrics.py``).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from django.db import DatabaseError, InterfaceError

from apps.batch.jobs import JobAlreadyRunning, JobLockLost, job_execute
from apps.common.exceptions import NotFound, ValidationFailed
from apps.eventbus.queues import Queue
from workers.base import task
from workers.batch.metrics import job_attempt_record, job_run_skipped

RETRY_ON = (DatabaseError, InterfaceError, JobLockLost)
FAIL_ON = (ValidationFailed, NotFound)
IGNORE = (JobAlreadyRunning,)


def run_job_task(task_self: Any, job_name: str, params: dict[str, Any] | None, trigger: str) -> dict[str, Any]:
    # hostname:pid names the pool process, the one an operator would kill.
    worker = f"{getattr(task_self.request, 'hostname', None) or socket.gethostname()}:{os.getpid()}"
    started = time.monotonic()
    outcome = "failed"
    try:
        run = job_execute(name=job_name, params=params or {}, trigger=trigger or "task", worker=worker)
        outcome = "succeeded"
    except JobAlreadyRunning:
        outcome = ""
        job_run_skipped(
            job=job_name, reason="already_running", trigger=trigger, task_id=getattr(task_self.request, "id", None)
        )
        raise
    except JobLockLost:
        outcome = "lock_lost"
        raise
    except FAIL_ON:
        outcome = "invalid"
        raise
    except (DatabaseError, InterfaceError):
        outcome = "database_error"
        raise
    finally:
        if outcome:
            job_attempt_record(job=job_name, outcome=outcome, seconds=time.monotonic() - started)
    return {"run_id": str(run.id), "status": run.status, "done": run.progress_done}


@task(
    name="maintenance.session_expiry",
    queue=Queue.MAINTENANCE,
    retry_on=RETRY_ON,
    fail_on=FAIL_ON,
    ignore=IGNORE,
    bind=True,
)
def session_expiry(
    self: Any, *, params: dict[str, Any] | None = None, trigger: str = "task", **kwargs: Any
) -> dict[str, Any]:
    return run_job_task(self, "session_expiry", params, trigger)


@task(
    name="maintenance.retention_purge",
    queue=Queue.MAINTENANCE,
    retry_on=RETRY_ON,
    fail_on=FAIL_ON,
    ignore=IGNORE,
    bind=True,
)
def retention_purge(
    self: Any, *, params: dict[str, Any] | None = None, trigger: str = "task", **kwargs: Any
) -> dict[str, Any]:
    return run_job_task(self, "retention_purge", params, trigger)


@task(name="batch.daily_rollup", queue=Queue.AI_BATCH, retry_on=RETRY_ON, fail_on=FAIL_ON, ignore=IGNORE, bind=True)
def daily_rollup(
    self: Any, *, params: dict[str, Any] | None = None, trigger: str = "task", **kwargs: Any
) -> dict[str, Any]:
    return run_job_task(self, "daily_rollup", params, trigger)


@task(
    name="batch.embedding_backfill", queue=Queue.AI_BATCH, retry_on=RETRY_ON, fail_on=FAIL_ON, ignore=IGNORE, bind=True
)
def embedding_backfill(
    self: Any, *, params: dict[str, Any] | None = None, trigger: str = "task", **kwargs: Any
) -> dict[str, Any]:
    return run_job_task(self, "embedding_backfill", params, trigger)


# Task name to job name: beat and the metrics label a scheduled run by its job.
JOB_TASKS = {
    session_expiry.name: "session_expiry",
    retention_purge.name: "retention_purge",
    daily_rollup.name: "daily_rollup",
    embedding_backfill.name: "embedding_backfill",
}


def job_for_task(task_name: str) -> str:
    """The batch job a task runs, or the task name itself for a task that runs no job."""
    return JOB_TASKS.get(task_name, task_name)
