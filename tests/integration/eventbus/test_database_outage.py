"""A PostgreSQL outage does not dead-letter good events: the subscriber holds them until it is back.

A real subscriber process on a private PostgreSQL (stopped and started by the
test) and this run's RabbitMQ. Before, each database error dropped the broker
connection; the broker redelivered the prefetched events on every reconnect
and the queue's delivery limit (5) dead-lettered them within seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.utils import timezone
from kombu import Connection

from apps.eventbus.contracts import event_build
from apps.eventbus.queues import DELIVERY_LIMIT
from tests.support.amqp import publish_confirmed
from tests.support.processes import REPO_ROOT
from tests.support.services import PrivatePostgres

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SUBSCRIBER = "tests.integration.eventbus.outage_subscriber.OutageRecording"
QUEUE = "events.test_outage"
HOLDING = "database error; holding the messages"


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.cleanup()


def _publish(n: int) -> None:
    events = [
        event_build(
            event_type="session.closed", session_id=uuid.uuid4(), user_id=None, data={}, occurred_at=timezone.now()
        )
        for _ in range(n)
    ]
    publish_confirmed(
        settings.BROKER_URL, [json.dumps(e.to_wire()) for e in events], message_ids=[str(e.event_id) for e in events]
    )


def _depth(queue: str) -> int:
    with Connection(settings.BROKER_URL) as conn:
        return conn.default_channel.queue_declare(queue=queue, passive=True).message_count


def _wait(condition, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}\n{log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.2)


def test_events_arriving_during_a_database_outage_are_applied_after_it_and_none_is_dead_lettered(
    postgres, subprocess_env, tmp_path
):
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE ce_outage")
    url = f"postgres://postgres@127.0.0.1:{postgres.port}/ce_outage"
    env = subprocess_env(DATABASE_URL=url, LOG_LEVEL="INFO")
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO_ROOT, env=env, check=True)

    def applied() -> int:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                row = conn.execute("SELECT count(*) FROM eventbus_processedevent WHERE subscriber = 'test_outage'")
                return int(row.fetchone()[0])
        except psycopg.OperationalError:
            return -1

    log = tmp_path / "subscribers.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "run_event_subscribers", "--subscriber", SUBSCRIBER],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait(lambda: "subscribers ready" in log.read_text(errors="replace"), 90, "the subscriber did not start", log)
        with Connection(settings.BROKER_URL) as conn:
            conn.default_channel.queue_purge(QUEUE)
            conn.default_channel.queue_purge(f"{QUEUE}.dlq")
        _publish(1)
        _wait(lambda: applied() == 1, 30, "the first event was not applied", log)

        postgres.stop()
        _publish(5)
        # Held through more retries than the delivery limit would have allowed redeliveries.
        _wait(
            lambda: log.read_text(errors="replace").count(HOLDING) > DELIVERY_LIMIT or _depth(f"{QUEUE}.dlq") > 0,
            120,
            "no retries seen",
            log,
        )
        assert _depth(f"{QUEUE}.dlq") == 0, "good events were dead-lettered during the outage"
        postgres.start()

        _wait(lambda: applied() == 6, 60, "the held events were not applied after the outage", log)
        assert _depth(f"{QUEUE}.dlq") == 0
        assert "dead-lettered" not in log.read_text(errors="replace")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
