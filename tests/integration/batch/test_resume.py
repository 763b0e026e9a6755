"""A job killed mid-way (kill -9) resumes from its checkpoint and ends as an uninterrupted run would.

Once with ``run_job`` as the process killed, once with the pool process of a
real celery worker, where the broker's redelivery brings the task back.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, date, datetime

import pytest
from django.contrib.auth import get_user_model

from apps.batch.jobs import job_execute
from apps.batch.models import DailySessionRollup, DailyUserRollup, JobRun
from apps.context.models import ContextEvent
from apps.context.services import EventInput, context_event_append, session_create
from tests.integration.batch.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY = date(2026, 2, 2)
SESSIONS = 8
USERS = 3


def _activity() -> None:
    users = [get_user_model().objects.create_user(username=f"u{i}") for i in range(USERS)]
    for i in range(SESSIONS):
        owner = users[i % USERS]
        session = session_create(owner=owner, title=f"s{i}")
        context_event_append(
            session=session, author=owner, events=[EventInput("note", {"text": f"n{j}"}) for j in range(i + 1)]
        )
    ContextEvent.objects.update(created_at=datetime(DAY.year, DAY.month, DAY.day, 9, tzinfo=UTC))


def _rollups() -> tuple[list[tuple], list[tuple]]:
    sessions = sorted(
        DailySessionRollup.objects.filter(day=DAY).values_list(
            "session_id", "events", "participants", "suggestions_shown", "suggestions_accepted"
        )
    )
    users = sorted(
        DailyUserRollup.objects.filter(day=DAY).values_list(
            "user_id", "events", "sessions", "suggestions_shown", "suggestions_accepted"
        )
    )
    return sessions, users


def _uninterrupted_result() -> tuple[list[tuple], list[tuple]]:
    DailySessionRollup.objects.all().delete()
    DailyUserRollup.objects.all().delete()
    job_execute(name="daily_rollup", params={"day": DAY.isoformat(), "chunk_size": 1})
    return _rollups()


def _progress() -> int:
    run = JobRun.objects.filter(job_name="daily_rollup").first()
    return run.progress_done if run else 0


def test_run_job_killed_mid_way_resumes_from_its_checkpoint(processes):
    _activity()
    params = {"day": DAY.isoformat(), "chunk_size": 1, "pause_ms": 400}
    first = processes.run_job("run-job-1", "daily_rollup", **params)
    wait_for(lambda: _progress() >= 3 or first.process.poll() is not None, message="three chunks committed")
    first.kill9()
    killed_at = _progress()
    run = JobRun.objects.get(job_name="daily_rollup")
    assert run.status == JobRun.Status.RUNNING and 3 <= killed_at < SESSIONS, first.log()

    second = processes.run_job("run-job-2", "daily_rollup", **params)
    assert second.process.wait(timeout=120) == 0, second.log()
    summary = json.loads(second.log().strip().splitlines()[-1])

    run.refresh_from_db()
    assert summary["id"] == str(run.id) and summary["resume_count"] == 1
    assert run.status == JobRun.Status.SUCCEEDED
    assert run.resumed_from == [killed_at]
    # Every item counted exactly once across the two processes: nothing redone.
    assert run.progress_done == SESSIONS + USERS
    resumed = _rollups()
    assert len(resumed[0]) == SESSIONS and len(resumed[1]) == USERS
    assert resumed == _uninterrupted_result()


def test_worker_killed_mid_job_is_redelivered_and_resumes(processes):
    from project.celery import app

    _activity()
    worker = processes.worker("batch-w1", "ai.batch")
    params = {"day": DAY.isoformat(), "chunk_size": 1, "pause_ms": 400}
    app.send_task("batch.daily_rollup", kwargs={"params": params}, queue="ai.batch")
    wait_for(lambda: _progress() >= 3, timeout=120, message=f"three chunks committed\n{worker.log()}")

    # kill -9 the pool process doing the job (JobRun.worker is host:pid)
    run = JobRun.objects.get(job_name="daily_rollup")
    pid = int(run.worker.rsplit(":", 1)[1])
    assert pid in worker.children()
    os.kill(pid, signal.SIGKILL)
    killed_at = _progress()

    def finished() -> JobRun | None:
        current = JobRun.objects.get(pk=run.pk)
        return current if current.status != JobRun.Status.RUNNING else None

    done = wait_for(finished, timeout=120, message=f"the redelivered task finishing\n{worker.log()}")
    assert done.status == JobRun.Status.SUCCEEDED, done.error
    assert done.resume_count == 1 and done.resumed_from[0] >= killed_at >= 3
    assert done.worker != run.worker  # a new pool process finished it
    assert done.progress_done == SESSIONS + USERS
    assert JobRun.objects.count() == 1
    assert _rollups() == _uninterrupted_result()
