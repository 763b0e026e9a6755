"""Writes for job runs and daily rollups.

The job runner (``apps.batch.jobs.job_execute``) calls the ``job_run_*``
functions while it holds the job's advisory lock; each is one statement or one
short transaction.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.models import F
from django.utils import timezone

from apps.batch import selectors
from apps.batch.models import DailySessionRollup, DailyUserRollup, JobRun
from apps.common.exceptions import Conflict

logger = logging.getLogger(__name__)


def job_run_claim(*, job_name: str, parameters: dict[str, Any], trigger: str, worker: str) -> JobRun:
    """The run to work on: the dead ``running`` run with these parameters (resumed), or a new one.

    The caller holds the job's advisory lock, so any ``running`` row found here
    belongs to a process that died. A dead run with other parameters is closed
    as failed: its checkpoint means nothing for different parameters.
    """
    now = timezone.now()
    with transaction.atomic():
        stale = JobRun.objects.select_for_update().filter(job_name=job_name, status=JobRun.Status.RUNNING).first()
        if stale is not None:
            if stale.parameters == parameters:
                stale.resume_count += 1
                stale.resumed_from = [*stale.resumed_from, stale.progress_done]
                stale.worker = worker
                stale.heartbeat_at = now
                stale.save(update_fields=["resume_count", "resumed_from", "worker", "heartbeat_at", "updated_at"])
                return stale
            stale.status = JobRun.Status.FAILED
            stale.finished_at = now
            stale.error = "Interrupted (its process died); superseded by a run with other parameters."
            stale.save(update_fields=["status", "finished_at", "error", "updated_at"])
        try:
            with transaction.atomic():
                return JobRun.objects.create(
                    job_name=job_name,
                    parameters=parameters,
                    trigger=trigger,
                    worker=worker,
                    started_at=now,
                    heartbeat_at=now,
                )
        except IntegrityError as exc:
            # Only reachable when the lock was bypassed; the constraint still holds.
            raise Conflict(f"Job {job_name!r} is already running.", code="job_running") from exc


def job_run_set_total(*, run: JobRun, total: int) -> JobRun:
    JobRun.objects.filter(pk=run.pk).update(progress_total=total)
    run.progress_total = total
    return run


def job_run_progress(
    *, run: JobRun, step_done: int, checkpoint: dict[str, Any], result: dict[str, Any] | None = None
) -> JobRun:
    """Record one chunk: runs inside the chunk's transaction, so work and checkpoint commit together."""
    merged = dict(run.result)
    for key, value in (result or {}).items():
        # Counters add up across chunks; anything else is replaced.
        if isinstance(value, int | float) and not isinstance(value, bool) and isinstance(merged.get(key), int | float):
            merged[key] = merged[key] + value
        else:
            merged[key] = value
    now = timezone.now()
    JobRun.objects.filter(pk=run.pk).update(
        progress_done=F("progress_done") + step_done,
        checkpoint=checkpoint,
        result=merged,
        heartbeat_at=now,
        updated_at=now,
    )
    run.progress_done += step_done
    run.checkpoint = checkpoint
    run.result = merged
    run.heartbeat_at = now
    return run


def job_run_report(*, run: JobRun, detail: dict[str, Any]) -> bool:
    """Publish what the running step is doing now (``progress_detail``), visible to everyone at once.

    A step runs inside the chunk's transaction, so a write through the default
    connection would show only when the step commits (a training round: at the
    end). This one goes through a connection of its own, in autocommit, opened
    and closed here, and it also refreshes the heartbeat. Best effort: it never
    waits for a row lock (``SKIP LOCKED``) and never raises; it returns whether
    the row was written (False when the run's row is not committed yet, e.g.
    inside a caller's transaction). The step's own result still commits with
    its work, so nothing here is needed to resume.
    """
    run.progress_detail = detail
    table = JobRun._meta.db_table
    side = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with side.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET progress_detail = %s::jsonb, heartbeat_at = now(), updated_at = now()"  # noqa: S608 (table name from the model)
                f" WHERE id = (SELECT id FROM {table} WHERE id = %s AND status = %s FOR UPDATE SKIP LOCKED)",
                [json.dumps(detail), run.pk, JobRun.Status.RUNNING],
            )
            return cursor.rowcount == 1
    except Exception:  # progress is for people watching; the work must not fail for it
        logger.warning("job progress report failed", extra={"job": run.job_name, "run_id": str(run.pk)}, exc_info=True)
        return False
    finally:
        side.close()


def job_run_finish(*, run: JobRun) -> JobRun:
    now = timezone.now()
    JobRun.objects.filter(pk=run.pk).update(status=JobRun.Status.SUCCEEDED, finished_at=now, updated_at=now)
    run.status = JobRun.Status.SUCCEEDED
    run.finished_at = now
    return run


def job_run_fail(*, run: JobRun, error: str) -> JobRun:
    now = timezone.now()
    JobRun.objects.filter(pk=run.pk).update(status=JobRun.Status.FAILED, finished_at=now, error=error, updated_at=now)
    run.status = JobRun.Status.FAILED
    run.finished_at = now
    run.error = error
    return run


def job_run_purge(*, older_than: datetime) -> int:
    """Delete finished runs that ended before ``older_than``; running ones are never touched."""
    deleted, _ = JobRun.objects.filter(
        status__in=[JobRun.Status.SUCCEEDED, JobRun.Status.FAILED], finished_at__lt=older_than
    ).delete()
    return deleted


def _rollup_upsert(
    model: type[DailySessionRollup | DailyUserRollup],
    *,
    day: date,
    key: str,
    fields: tuple[str, ...],
    rows: dict[Any, dict[str, int]],
) -> int:
    """Upsert one ``model`` row per ``rows`` entry (``key`` -> counters) of ``day``: recomputing replaces."""
    now = timezone.now()
    model.objects.bulk_create(
        [model(day=day, computed_at=now, **{f"{key}_id": kid}, **counts) for kid, counts in rows.items()],
        update_conflicts=True,
        unique_fields=["day", key],
        update_fields=[*fields, "computed_at"],
    )
    return len(rows)


def daily_session_rollup_upsert(*, day: date, session_ids: list[Any]) -> int:
    """(Re)compute the rollup rows of ``day`` for these sessions; idempotent."""
    rows = selectors.session_activity(day=day, session_ids=session_ids)
    return _rollup_upsert(DailySessionRollup, day=day, key="session", fields=selectors.SESSION_FIELDS, rows=rows)


def daily_user_rollup_upsert(*, day: date, user_ids: list[int]) -> int:
    """(Re)compute the rollup rows of ``day`` for these users; idempotent."""
    rows = selectors.user_activity(day=day, user_ids=user_ids)
    return _rollup_upsert(DailyUserRollup, day=day, key="user", fields=selectors.USER_FIELDS, rows=rows)
