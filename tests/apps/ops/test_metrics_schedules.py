"""The schedule figures behind the job alerts: run times counted between two moments, intervals on /metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from celery.schedules import crontab, schedule
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from workers.batch.beat import run_times_between, schedule_interval_seconds

T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.parametrize(
    ("sched", "until", "expected"),
    [
        (schedule(timedelta(minutes=5)), T0 + timedelta(minutes=4), (0, T0)),
        (schedule(timedelta(minutes=5)), T0 + timedelta(minutes=61), (12, T0 + timedelta(minutes=60))),
        (crontab(minute="*/15"), T0 + timedelta(hours=1, minutes=5), (4, T0 + timedelta(hours=1))),
        (crontab(minute=30, hour=3), T0 + timedelta(days=3), (3, T0 + timedelta(days=2, hours=3, minutes=30))),
        (crontab(minute=0, hour=3, day_of_week="tue"), T0 + timedelta(days=14), (2, T0 + timedelta(days=7, hours=3))),
    ],
)
def test_run_times_between_counts_each_run_time_after_since_up_to_until(sched, until, expected):
    assert run_times_between(sched, T0, until) == expected


def test_run_times_between_stops_at_its_cap():
    count, _ = run_times_between(schedule(timedelta(seconds=1)), T0, T0 + timedelta(days=30))

    assert count == 10_000


def test_schedule_interval_is_the_interval_or_the_gap_between_a_crontabs_next_runs():
    assert schedule_interval_seconds(schedule(timedelta(minutes=10))) == 600
    assert schedule_interval_seconds(crontab(minute=20, hour=0)) == 86400
    assert schedule_interval_seconds(crontab(minute="*/5")) == 300


@pytest.mark.django_db
def test_metrics_report_each_jobs_shortest_enabled_interval(client):
    PeriodicTask.objects.all().delete()
    hourly, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    minutes, _ = IntervalSchedule.objects.get_or_create(every=10, period=IntervalSchedule.MINUTES)
    nightly, _ = CrontabSchedule.objects.get_or_create(minute="30", hour="3")
    PeriodicTask.objects.create(name="a", task="maintenance.session_expiry", interval=hourly)
    PeriodicTask.objects.create(name="b", task="maintenance.session_expiry", interval=minutes)
    PeriodicTask.objects.create(name="c", task="maintenance.retention_purge", crontab=nightly)
    PeriodicTask.objects.create(name="d", task="batch.daily_rollup", interval=minutes, enabled=False)
    PeriodicTask.objects.create(name="e", task="ops.something_else", interval=hourly)

    text = client.get("/metrics").content.decode()

    assert _sample(text, "ce_batch_job_schedule_interval_seconds", job="session_expiry") == 600
    assert _sample(text, "ce_batch_job_schedule_interval_seconds", job="retention_purge") == 86400
    assert _sample(text, "ce_batch_job_schedule_interval_seconds", job="daily_rollup") is None
    assert _sample(text, "ce_batch_job_schedule_interval_seconds", job="ops.something_else") == 3600
