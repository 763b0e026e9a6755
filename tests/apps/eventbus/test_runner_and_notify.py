"""The subscriber runner in-process on the real broker, and the relay's LISTEN/NOTIFY wake-up."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu import Connection, Queue

from apps.eventbus import services
from apps.eventbus.contracts import event_build
from apps.eventbus.models import ProcessedEvent
from apps.eventbus.relay import NotifyListener
from apps.eventbus.subscribers.base import Subscriber
from apps.eventbus.subscribers.runner import SubscriberRunner
from tests.support.amqp import publish_confirmed


class Recording(Subscriber):
    name = "test_recording"
    patterns = ("session.*",)
    batch_size = 10

    def handle(self, event):
        if event.data.get("explode"):
            raise ValueError("refused")


@pytest.fixture
def runner():
    runner = SubscriberRunner(subscribers=[Recording()], max_wait=0.01)
    runner.connect()
    with Connection(settings.BROKER_URL) as conn:
        Queue("events.test_recording", no_declare=True)(conn.channel()).purge()
        Queue("events.test_recording.dlq", no_declare=True)(conn.channel()).purge()
    yield runner
    runner.close()


def _publish(bodies: list[bytes]) -> None:
    publish_confirmed(settings.BROKER_URL, bodies)


def _queue_state() -> dict:
    with Connection(settings.BROKER_URL) as conn:
        ok = conn.default_channel.queue_declare(queue="events.test_recording", passive=True)
        return {"ready": ok.message_count, "consumers": ok.consumer_count}


def _body(**data) -> bytes:
    import json

    event = event_build(
        event_type="session.closed", session_id=uuid.uuid4(), user_id=None, data=data, occurred_at=timezone.now()
    )
    return json.dumps(event.to_wire()).encode()


@pytest.mark.django_db
def test_runner_applies_good_events_once_and_dead_letters_bad_ones_alone(runner):
    good = [_body() for _ in range(4)]
    _publish([good[0], b"{not json", good[1], _body(explode=True), good[2], good[0], good[3]])
    deadline = time.monotonic() + 60
    while runner.stats.applied + runner.stats.duplicates + runner.stats.dead_lettered < 7:
        assert time.monotonic() < deadline, (runner.stats, _queue_state(), runner.slots["test_recording"].messages)
        runner.run_once(idle_timeout=0.2)
    assert (runner.stats.applied, runner.stats.duplicates, runner.stats.dead_lettered) == (4, 1, 2)
    assert ProcessedEvent.objects.filter(subscriber="test_recording").count() == 4
    with Connection(settings.BROKER_URL) as conn:
        dlq = Queue("events.test_recording.dlq", no_declare=True)(conn.channel())
        dead = []
        deadline = time.monotonic() + 30
        while len(dead) < 2 and time.monotonic() < deadline:
            message = dlq.get(no_ack=True)
            if message is not None:
                dead.append(message.body)
        assert len(dead) == 2 and b"{not json" in dead and any(b'"explode"' in body for body in dead)


@pytest.mark.django_db(transaction=True)
def test_notify_wakes_the_relay_at_commit_and_not_on_rollback():
    listener = NotifyListener()
    listener.wait(0.01)  # connect and LISTEN
    woke: list[tuple[bool, float]] = []

    def wait() -> None:
        t0 = time.monotonic()
        woke.append((listener.wait(5.0), time.monotonic() - t0))

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    with pytest.raises(RuntimeError), transaction.atomic():
        services.outbox_event_add(event_type="session.closed", session_id=None, user_id=None, data={})
        raise RuntimeError("rolled back")
    time.sleep(0.3)
    assert not woke  # a rolled-back insert notifies nobody
    with transaction.atomic():
        services.outbox_event_add(event_type="session.closed", session_id=None, user_id=None, data={})
    thread.join(timeout=10)
    listener.close()
    assert woke and woke[0][0] is True and woke[0][1] < 2.0


@pytest.mark.django_db
def test_dead_letters_replayed_after_the_fix_are_applied_once(runner, monkeypatch):
    from apps.ops.deadletters.archiver import subscriber_dead_letters_replay
    from apps.ops.models import DeadLetterReplay, ReplayStatus

    monkeypatch.setenv("EVENTBUS_SUBSCRIBERS", f"{__name__}.Recording")
    body = _body(explode=True)
    _publish([body])
    deadline = time.monotonic() + 60
    while runner.stats.dead_lettered < 1:
        assert time.monotonic() < deadline, runner.stats
        runner.run_once(idle_timeout=0.2)
    monkeypatch.setattr(Recording, "handle", lambda self, event: None)  # the fix
    result = {"archived": 0}
    while result["archived"] < 1:  # dead-lettering is asynchronous
        assert time.monotonic() < deadline
        result = subscriber_dead_letters_replay(subscriber="test_recording")
    assert result["archived"] == 1 and len(result["replayed"]) == 1
    again = subscriber_dead_letters_replay(subscriber="test_recording")  # archived rows replay once
    assert again["archived"] == 0 and again["replayed"] == []
    while runner.stats.applied < 1:
        assert time.monotonic() < deadline, runner.stats
        runner.run_once(idle_timeout=0.2)
    assert ProcessedEvent.objects.filter(subscriber="test_recording").count() == 1
    # One audited path: the replay row, settled by the runner once the event applied.
    assert DeadLetterReplay.objects.get().status == ReplayStatus.SUCCEEDED
    with pytest.raises(Exception, match="Unknown subscriber"):
        subscriber_dead_letters_replay(subscriber="nobody")
