"""The default beat schedule, as rows operators edit in admin ("Periodic tasks").

Created once here; later edits in admin are never overwritten by a deploy
(get_or_create by name). Times are UTC. Each entry names the task's queue so
beat publishes to the right quorum queue on the ``tasks`` exchange.
"""

import json

from django.db import migrations

# "params" holds the job's parameters (see ``python manage.py run_job --list``).
BEAT = {"trigger": "beat", "params": {}}

INTERVALS = {
    "batch: session expiry": (5, "minutes", "maintenance.session_expiry", "maintenance", BEAT),
    "batch: embedding backfill": (10, "minutes", "batch.embedding_backfill", "ai.batch", BEAT),
}
CRONTABS = {
    # Yesterday's rollups, once the day is over (plus slack for late commits).
    "batch: daily rollups": ("20", "0", "batch.daily_rollup", "ai.batch", BEAT),
    "batch: retention purge": ("30", "3", "maintenance.retention_purge", "maintenance", BEAT),
    "training: next-action model": ("0", "2", "training.train_next_action", "ai.training", BEAT),
}


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    for name, (every, period, task, queue, kwargs) in INTERVALS.items():
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
        PeriodicTask.objects.get_or_create(
            name=name,
            defaults={"task": task, "interval": interval, "queue": queue, "kwargs": json.dumps(kwargs),
                      "description": f"Runs {task} every {every} {period}."},
        )
    for name, (minute, hour, task, queue, kwargs) in CRONTABS.items():
        crontab, _ = CrontabSchedule.objects.get_or_create(
            minute=minute, hour=hour, day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
        )
        PeriodicTask.objects.get_or_create(
            name=name,
            defaults={"task": task, "crontab": crontab, "queue": queue, "kwargs": json.dumps(kwargs),
                      "description": f"Runs {task} daily at {hour.zfill(2)}:{minute.zfill(2)} UTC."},
        )
    # Tell a running beat that the schedule changed (what admin's save signal does).
    from django.utils import timezone

    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def delete_schedule(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[*INTERVALS, *CRONTABS]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("batch", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, delete_schedule)]
