"""The default beat schedule exists after migrate and names real tasks and queues."""

from __future__ import annotations

import json

from django_celery_beat.models import PeriodicTask

from apps.eventbus.queues import Queue
from project.celery import app

EXPECTED = {
    "batch: session expiry": ("maintenance.session_expiry", "maintenance"),
    "batch: embedding backfill": ("batch.embedding_backfill", "ai.batch"),
    "batch: daily rollups": ("batch.daily_rollup", "ai.batch"),
    "batch: retention purge": ("maintenance.retention_purge", "maintenance"),
    "training: next-action model": ("training.train_next_action", "ai.training"),
}


def test_default_schedule_exists_after_migrate(db):
    rows = {t.name: t for t in PeriodicTask.objects.filter(name__in=EXPECTED)}
    assert set(rows) == set(EXPECTED)
    for name, (task, queue) in EXPECTED.items():
        row = rows[name]
        assert (row.task, row.queue, row.enabled) == (task, queue, True)
        assert (row.interval is None) != (row.crontab is None)
        assert json.loads(row.kwargs) == {"trigger": "beat", "params": {}}
    assert rows["batch: session expiry"].interval.every == 5
    assert (rows["training: next-action model"].crontab.hour, rows["training: next-action model"].crontab.minute) == (
        "2",
        "0",
    )


def test_scheduled_tasks_are_registered_on_their_queues(db):
    app.loader.import_default_modules()
    for task, queue in EXPECTED.values():
        assert task in app.tasks, task
        assert app.tasks[task].queue == Queue(queue).value
