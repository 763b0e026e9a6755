"""Job and beat metrics from real processes, read over each process's own METRICS_PORT.

A prefork worker runs ``maintenance.session_expiry`` twice: first while the
test holds the job's lock (the run is skipped: logged and counted), then
freely (its duration and outcome are recorded, and ``/metrics`` reports its
last success from the run's row). A beat sends one schedule on time, one that
last ran a minute ago (the run times in between are counted as missed) and
watches a disabled one (its run times are counted as skipped).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from apps.batch.jobs import ADVISORY_NAMESPACE, _lock_key
from apps.batch.models import JobRun
from tests.integration.batch.conftest import drain, wait_for
from tests.support.metrics import metric_sum, metrics_scrape
from tests.support.services import free_port

pytestmark = [pytest.mark.integration]


@pytest.fixture
def metrics_env(tmp_path) -> Iterator[dict[str, str]]:
    """What a container gives its process: a multi-process directory of its own and a metrics port."""
    directory = tmp_path / "prom"
    directory.mkdir()
    yield {"METRICS_PORT": str(free_port()), "PROMETHEUS_MULTIPROC_DIR": str(directory)}


def _worker_cmd(name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "project",
        "worker",
        "-Q",
        "maintenance",
        "-n",
        f"{name}@%h",
        "--pool",
        "prefork",
        "--concurrency",
        "1",
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        "INFO",
    ]


def test_a_run_that_finds_its_job_locked_is_skipped_and_counted_and_a_success_reports_duration_and_time(
    processes, broker, metrics_env
):
    from apps.ops.metrics import metrics_render
    from project.celery import app

    port = int(metrics_env["METRICS_PORT"])
    worker = processes("jobs-w", _worker_cmd("jobs-w"), **metrics_env)
    wait_for(lambda: "# HELP" in metrics_scrape(port), timeout=90, message=f"the worker's metrics port\n{worker.log()}")

    # Given a run of the job still going (its lock held), when beat's run arrives, it is skipped
    lock = [ADVISORY_NAMESPACE, _lock_key("session_expiry")]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", lock)
    try:
        app.send_task("maintenance.session_expiry", kwargs={"trigger": "beat"}, queue="maintenance")
        skipped = wait_for(
            lambda: metric_sum(metrics_scrape(port), "ce_batch_job_runs_skipped_total", job="session_expiry"),
            timeout=60,
            message=f"the skipped run counted\n{worker.log()}",
        )
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", lock)
    assert skipped == 1
    text = metrics_scrape(port)
    assert metric_sum(text, "ce_batch_job_runs_skipped_total", job="session_expiry", reason="already_running") == 1
    assert metric_sum(text, "ce_batch_job_runs_total", job="session_expiry") == 0
    line = next(
        json.loads(raw) for raw in worker.log().splitlines() if raw.startswith("{") and "batch_job_run_skipped" in raw
    )
    assert (line["job"], line["reason"], line["skipped"], line["trigger"]) == (
        "session_expiry",
        "already_running",
        1,
        "beat",
    )
    assert not JobRun.objects.filter(job_name="session_expiry").exists()

    # When the lock is free, the run succeeds: its outcome and duration are recorded
    app.send_task("maintenance.session_expiry", kwargs={"trigger": "beat"}, queue="maintenance")
    wait_for(
        lambda: metric_sum(metrics_scrape(port), "ce_batch_job_runs_total", job="session_expiry", outcome="succeeded"),
        timeout=60,
        message=f"the run's outcome recorded\n{worker.log()}",
    )
    text = metrics_scrape(port)
    assert metric_sum(text, "ce_batch_job_duration_seconds_count", job="session_expiry", outcome="succeeded") == 1
    assert metric_sum(text, "ce_batch_job_duration_seconds_sum", job="session_expiry", outcome="succeeded") > 0
    assert metric_sum(text, "ce_batch_job_runs_skipped_total", job="session_expiry") == 1

    # And /metrics reports its last success (from the run's row) and its schedule's interval
    run = JobRun.objects.get(job_name="session_expiry")
    assert run.status == JobRun.Status.SUCCEEDED
    rendered = metrics_render().decode()
    last = metric_sum(rendered, "ce_batch_job_last_success_timestamp_seconds", job="session_expiry")
    assert last == pytest.approx(run.finished_at.timestamp(), abs=0.001)
    # The seeded schedules (apps/batch/migrations/0002): every 5 minutes, and a daily crontab.
    assert metric_sum(rendered, "ce_batch_job_schedule_interval_seconds", job="session_expiry") == 300
    assert metric_sum(rendered, "ce_batch_job_schedule_interval_seconds", job="retention_purge") == 86400


def test_beat_serves_its_metrics_and_counts_sends_missed_run_times_and_disabled_runs(processes, broker, metrics_env):
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    every_two, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="probe", task="maintenance.beat_probe", interval=every_second, queue="maintenance")
    late = PeriodicTask.objects.create(
        name="late", task="maintenance.beat_late", interval=every_two, queue="maintenance"
    )
    # Last sent (and last edited) a minute ago: 29 of its run times passed since, one is sent now.
    a_minute_ago = timezone.now() - timedelta(seconds=60)
    PeriodicTask.objects.filter(pk=late.pk).update(last_run_at=a_minute_ago, date_changed=a_minute_ago)
    PeriodicTask.objects.create(
        name="off", task="maintenance.beat_off", interval=every_second, queue="maintenance", enabled=False
    )
    port = int(metrics_env["METRICS_PORT"])
    started = timezone.now()
    beat = processes.beat("beat-m", **metrics_env)

    missed = wait_for(
        lambda: metric_sum(metrics_scrape(port), "ce_batch_job_runs_skipped_total", job="maintenance.beat_late"),
        timeout=90,
        message=f"beat counting the late schedule's missed run times\n{beat.log()}",
    )

    # The run times (every 2 s) from a minute ago to the send, less beat's one-second slack and
    # the one sent: 28 had beat sent at once, more for each 2 s it took to start.
    def run_times_until(moment) -> int:
        return int(((moment - a_minute_ago).total_seconds() - 1) // 2)

    assert run_times_until(started) - 1 <= missed <= run_times_until(timezone.now()) - 1, missed
    wait_for(
        lambda: (
            metric_sum(
                metrics_scrape(port), "ce_batch_job_runs_skipped_total", job="maintenance.beat_off", reason="disabled"
            )
            >= 3
        ),
        timeout=60,
        message=f"the disabled schedule's run times counted\n{beat.log()}",
    )
    wait_for(
        lambda: metric_sum(metrics_scrape(port), "ce_beat_runs_sent_total", job="maintenance.beat_late") >= 3,
        timeout=60,
        message=f"the late schedule sent on time again\n{beat.log()}",
    )
    text = metrics_scrape(port)
    assert metric_sum(text, "ce_beat_leader") == 1
    # Once on time again, no more run times are missed.
    assert (
        metric_sum(text, "ce_batch_job_runs_skipped_total", job="maintenance.beat_late", reason="missed_window")
        == missed
    )
    assert metric_sum(text, "ce_batch_job_runs_skipped_total", job="maintenance.beat_probe") == 0
    sent = metric_sum(text, "ce_beat_runs_sent_total", job="maintenance.beat_probe")
    assert sent >= 2
    assert metric_sum(text, "ce_beat_runs_sent_total", job="maintenance.beat_off") == 0

    beat.stop()
    messages = drain(broker, "maintenance")
    assert sum(m["task"] == "maintenance.beat_probe" for m in messages) >= sent
    assert not any(m["task"] == "maintenance.beat_off" for m in messages)
    lines = [
        json.loads(raw) for raw in beat.log().splitlines() if raw.startswith("{") and "batch_job_run_skipped" in raw
    ]
    late_lines = [line for line in lines if line["job"] == "maintenance.beat_late"]
    assert [(line["reason"], line["skipped"], line["schedule"]) for line in late_lines] == [
        ("missed_window", missed, "late")
    ]
    assert {(line["reason"], line["schedule"]) for line in lines if line["job"] == "maintenance.beat_off"} == {
        ("disabled", "off")
    }
