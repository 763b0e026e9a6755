"""Beat outlives a PostgreSQL restart: it stands by while the database is away and sends again after.

Before, the tick's database error ended the beat process
(``OperationalError: terminating connection due to administrator command``),
and with it every scheduled job until someone restarted it.
"""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from tests.integration.batch.conftest import REPO_ROOT, drain, wait_for
from tests.support.services import PrivatePostgres

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROBE = "maintenance.beat_outage_probe"  # never registered: counted in the queue, not run

SCHEDULE = """
import json
from django_celery_beat.models import IntervalSchedule, PeriodicTask
every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
PeriodicTask.objects.create(name="outage-probe", task="{task}", interval=every, queue="maintenance")
"""


def test_beat_keeps_running_through_a_postgresql_restart_and_sends_again(processes, broker, subprocess_env):
    postgres = PrivatePostgres()
    postgres.start()
    try:
        with psycopg.connect(postgres.url, autocommit=True) as admin:
            admin.execute("CREATE DATABASE ce_beat_outage")
        url = f"postgres://postgres@127.0.0.1:{postgres.port}/ce_beat_outage"
        env = subprocess_env(DATABASE_URL=url)
        for command in (["migrate", "--noinput", "-v", "0"], ["shell", "-c", SCHEDULE.format(task=PROBE)]):
            subprocess.run([sys.executable, "manage.py", *command], cwd=REPO_ROOT, env=env, check=True)
        beat = processes.beat("beat-outage", DATABASE_URL=url)
        wait_for(lambda: [m for m in drain(broker, "maintenance") if m["task"] == PROBE], timeout=90, message="sends")

        postgres.stop()
        wait_for(lambda: "standing by" in beat.log(), timeout=60, message="beat noticing the outage")
        postgres.start()
        drain(broker, "maintenance")
        wait_for(
            lambda: [m for m in drain(broker, "maintenance") if m["task"] == PROBE],
            timeout=90,
            message=f"sends after the restart\n{beat.log()[-3000:]}",
        )
        assert beat.process.poll() is None, beat.log()[-3000:]
    finally:
        processes.stop_all()
        postgres.cleanup()
