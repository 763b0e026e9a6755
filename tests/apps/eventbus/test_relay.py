"""The relay against the real broker (this run's vhost), driven in-process batch by batch."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.utils import timezone
from kombu import Connection, Exchange, Queue

from apps.eventbus import services
from apps.eventbus.contracts import event_parse
from apps.eventbus.models import OutboxMessage
from apps.eventbus.relay import OutboxRelay

pytestmark = pytest.mark.django_db


@pytest.fixture
def relay():
    relay = OutboxRelay(batch_size=50, max_attempts=2)
    yield relay
    relay.close()


@pytest.fixture
def tap():
    """A private queue bound to every event: what the relay actually published."""
    conn = Connection(settings.BROKER_URL)
    channel = conn.channel()
    queue = Queue(
        "", exchange=Exchange("events", type="topic", durable=True), routing_key="#", exclusive=True, auto_delete=True
    )(channel)
    queue.exchange.declare()
    queue.declare()

    def drain() -> list:
        got = []
        while (message := queue.get(no_ack=True)) is not None:
            got.append(message)
        return got

    yield drain
    conn.release()


def test_relay_publishes_pending_rows_once_with_their_properties(relay, tap):
    events = services.outbox_events_add_bulk(
        events=[services.OutboxEvent(event_type="session.closed", session_id=None, user_id=None, correlation_id="c-9")]
        * 3
    )
    result = relay.relay_batch()
    assert (result.claimed, result.published, result.failed) == (3, 3, 0)
    assert relay.relay_batch().claimed == 0
    got = tap()
    assert [m.properties["message_id"] for m in got] == [str(e.event_id) for e in events]
    assert got[0].delivery_info["routing_key"] == "session.closed"
    assert got[0].headers["ce_correlation_id"] == "c-9" and got[0].content_type == "application/json"
    assert event_parse(got[0].body).event_id == events[0].event_id
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {"published"}


def test_unroutable_rows_back_off_then_park_without_blocking_others(relay, tap, caplog):
    # A task row for a queue nobody declared: the broker returns it (mandatory routing).
    OutboxMessage.objects.create(kind="task", exchange="tasks", routing_key="no.such.queue", body=[[], {}, {}])
    services.outbox_event_add(event_type="session.closed", session_id=None, user_id=None, data={})
    result = relay.relay_batch()
    assert (result.published, result.failed, result.parked) == (1, 1, 0)
    bad = OutboxMessage.objects.get(kind="task")
    assert bad.status == "pending" and bad.attempts == 1 and "unroutable" in bad.last_error
    assert bad.available_at > timezone.now() - timezone.timedelta(seconds=1)
    OutboxMessage.objects.filter(pk=bad.pk).update(available_at=timezone.now())
    result = relay.relay_batch()
    assert result.parked == 1
    bad.refresh_from_db()
    assert bad.status == "parked"
    assert any(getattr(r, "alert", None) == "outbox_row_parked" for r in caplog.records)
    assert relay.relay_batch().claimed == 0
    assert len(tap()) == 1


def test_task_rows_reach_their_work_queue_as_celery_messages(relay):
    task_id = services.outbox_task_add(
        task_name="ops.ping", kwargs={"n": 1}, queue="maintenance", correlation_id="cid-1"
    )
    assert relay.relay_batch().published == 1
    with Connection(settings.BROKER_URL) as conn:
        queue = Queue("maintenance", no_declare=True)(conn.channel())
        message = None
        for _ in range(50):
            message = queue.get(no_ack=True)
            if message is None or message.headers.get("id") == task_id:
                break
        assert message is not None and message.headers["id"] == task_id
        assert message.headers["task"] == "ops.ping" and message.properties["correlation_id"] == task_id
        assert message.decode() == [[], {"n": 1}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
