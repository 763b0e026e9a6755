"""Every committed event published, none invented: real relay and subscriber processes."""

from __future__ import annotations

import re
import signal
import time

import pytest
from django.conf import settings
from django.db import transaction
from kombu import Connection, Queue

from apps.batch.models import SessionActivity
from apps.context import services as context_services
from apps.context.services import EventInput
from apps.eventbus.contracts import event_parse
from apps.eventbus.models import OutboxMessage, ProcessedEvent
from tests.integration.eventbus.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _all_published() -> bool:
    return not OutboxMessage.objects.exclude(status="published").exists()


def _outbox_ids() -> set[str]:
    return {str(m) for m in OutboxMessage.objects.values_list("message_id", flat=True)}


def test_rolled_back_transaction_publishes_nothing_committed_one_exactly_its_events(
    start_relay, tap, session_factory, user
):
    start_relay()
    session = session_factory()
    with pytest.raises(RuntimeError), transaction.atomic():
        context_services.context_event_append(
            session=session, author=user, events=[EventInput("context_update", {"text": "never"})] * 3
        )
        raise RuntimeError("the request failed after the append")
    context_services.context_event_append(
        session=session, author=user, events=[EventInput("context_update", {"text": f"t{i}"}) for i in range(4)]
    )
    committed = _outbox_ids()
    assert len(committed) == 5  # session.created + 4 context.updated
    wait_until(lambda: len(tap.drain()) >= 5 and _all_published(), what="the committed events on the broker")
    time.sleep(1.0)  # anything extra would arrive now
    published = tap.message_ids()
    assert sorted(published) == sorted(committed)
    events = [event_parse(m.body) for m in tap.messages]
    assert [e.data["data"]["text"] for e in events if e.event_type == "context.updated"] == [f"t{i}" for i in range(4)]


def test_relay_killed_between_publish_and_mark_republishes_and_subscribers_apply_once(
    start_relay, start_subscribers, tap, session_factory, user
):
    session = session_factory()
    context_services.context_event_append(
        session=session, author=user, events=[EventInput("context_update", {"text": f"x{i}"}) for i in range(5)]
    )
    crashing = start_relay(OUTBOX_RELAY_CRASH_AFTER_PUBLISH="1")
    crashing.popen.wait(timeout=30)
    assert crashing.popen.returncode == -signal.SIGKILL
    # The broker confirmed all six, but the rows were never marked.
    wait_until(lambda: len(tap.drain()) >= 6, what="the first publication")
    assert OutboxMessage.objects.filter(status="pending").count() == 6

    start_subscribers("activity")
    start_relay()
    wait_until(_all_published, what="the second publication")
    wait_until(lambda: len(tap.drain()) >= 12, what="the republished copies")
    ids = tap.message_ids()
    assert len(ids) == 12 and all(ids.count(i) == 2 for i in set(ids))
    wait_until(lambda: ProcessedEvent.objects.filter(subscriber="activity").count() == 6, what="activity applied")
    time.sleep(1.0)  # duplicates drained by now
    activity = SessionActivity.objects.get(session_id=session.id)
    assert activity.events_total == 6
    assert activity.events_by_type == {"session.created": 1, "context.updated": 5}
    assert activity.participants_joined == 1


def test_two_relays_never_publish_the_same_row_twice(start_relay, tap, session_factory, user):
    session = session_factory()
    for _ in range(4):
        context_services.context_event_append(
            session=session, author=user, events=[EventInput("note", {"text": "n"}) for _ in range(250)]
        )
    assert OutboxMessage.objects.count() == 1001
    first = start_relay("--batch-size", "100")
    second = start_relay("--batch-size", "100")
    wait_until(_all_published, timeout=60, what="all rows published")
    wait_until(lambda: len(tap.drain()) >= 1001, what="all messages on the broker")
    time.sleep(0.5)
    ids = tap.message_ids()
    assert len(ids) == len(set(ids)) == 1001
    assert set(ids) == _outbox_ids()
    # Each relay reports what it published when stopped: the two add up to the
    # rows, so no row went out twice (SKIP LOCKED gives each its own batches).
    counts = []
    for relay in (first, second):
        relay.stop()
        match = re.search(r"published (\d+)", relay.output())
        assert match, relay.output()
        counts.append(int(match.group(1)))
    assert sum(counts) == 1001, counts


def test_failing_subscriber_dead_letters_that_event_alone_and_keeps_going(
    start_relay, start_subscribers, session_factory, user
):
    subscribers = start_subscribers("--subscriber", "tests.integration.eventbus.support.PoisonSensitiveSubscriber")
    start_relay()
    session = session_factory()
    texts = [{"text": "a"}, {"text": "b"}, {"text": "bad", "poison": True}, {"text": "c"}, {"text": "d"}]
    appended = context_services.context_event_append(
        session=session, author=user, events=[EventInput("context_update", d) for d in texts]
    )
    later = context_services.context_event_append(
        session=session, author=user, events=[EventInput("context_update", {"text": "after"})]
    )
    poison_seq = appended[2].seq
    wait_until(lambda: ProcessedEvent.objects.filter(subscriber="test_poison").count() == 5, what="5 applied")
    applied_seqs = sorted(
        event_parse(body).data["seq"]
        for body in OutboxMessage.objects.filter(
            message_id__in=ProcessedEvent.objects.filter(subscriber="test_poison").values("event_id")
        ).values_list("body", flat=True)
    )
    assert applied_seqs == [e.seq for e in appended if e.seq != poison_seq] + [later[0].seq]
    with Connection(settings.BROKER_URL) as conn:
        dlq = Queue("events.test_poison.dlq", no_declare=True)(conn.channel())
        dead = []
        wait_until(lambda: bool(dead.extend(iter(lambda: dlq.get(no_ack=True), None)) or dead), what="dead letter")
        time.sleep(0.5)
        dead.extend(iter(lambda: dlq.get(no_ack=True), None))
    assert len(dead) == 1
    assert event_parse(dead[0].body).data["seq"] == poison_seq
    assert dead[0].headers["x-first-death-reason"] == "rejected"
    assert "dead-lettered an event" in subscribers.output()
    assert subscribers.popen.poll() is None
