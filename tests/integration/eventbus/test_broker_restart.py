"""A private RabbitMQ restarted under a steady stream of appends: nothing lost, duplicates absorbed."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from apps.batch.models import SessionActivity
from apps.context import services as context_services
from apps.context.services import EventInput
from apps.eventbus.models import OutboxMessage, ProcessedEvent
from tests.integration.eventbus.conftest import wait_until
from tests.support.services import PrivateRabbitMQ

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def private_rabbit():
    rabbit = PrivateRabbitMQ()
    rabbit.start()
    yield rabbit
    rabbit.cleanup()


def test_broker_restart_under_steady_appends_loses_no_event(
    private_rabbit, start_relay, start_subscribers, session_factory, user
):
    env = {"TEST_BROKER_URL": private_rabbit.url}
    start_subscribers("activity", **env)
    relay = start_relay(**env)
    session = session_factory()
    stop = threading.Event()
    committed = {"events": 1}  # session.created
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            n = 0
            while not stop.is_set():
                batch = [EventInput("note", {"text": f"n{n + i}"}) for i in range(5)]
                context_services.context_event_append(session=session, author=user, events=batch)
                committed["events"] += len(batch)
                n += len(batch)
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        wait_until(
            lambda: ProcessedEvent.objects.filter(subscriber="activity").count() >= 30,
            timeout=60,
            what="events flowing before the restart",
        )
        private_rabbit.restart(down_for=1.0)
        # Keep appending for a while after the broker is back.
        time.sleep(2.0)
    finally:
        stop.set()
        producer.join(timeout=30)
    assert not errors, errors
    total = committed["events"]
    assert OutboxMessage.objects.count() == total
    wait_until(
        lambda: not OutboxMessage.objects.exclude(status="published").exists(),
        timeout=90,
        what="every row published after the restart",
    )
    wait_until(
        lambda: ProcessedEvent.objects.filter(subscriber="activity").count() == total,
        timeout=90,
        what="every committed event applied",
    )
    time.sleep(1.0)  # any redelivered duplicate has arrived by now
    activity = SessionActivity.objects.get(session_id=session.id)
    lost = total - activity.events_total
    assert lost == 0
    assert activity.events_by_type == {"session.created": 1, "context.updated": total - 1}
    assert "relay broker error" in relay.output()
