"""A subscriber's dead letters through the real archiver and back: real subscriber, relay and archiver processes.

A subscriber refuses an event -> ``events.<sub>.dlq`` -> the archiver stores a
``DeadLetter`` row (queue, reason, exception) -> a replay through the REST API
goes to that subscriber's queue only; once the cause is fixed the event is
applied exactly once, and a forced repeat is a no-op.
"""

from __future__ import annotations

import contextlib
import time

import pytest
import redis
from django.conf import settings
from kombu import Connection

from apps.context import services as context_services
from apps.context.services import EventInput
from apps.eventbus.models import ProcessedEvent
from apps.ops.models import DeadLetter, DeadLetterReplay, ReplayStatus
from tests.integration.eventbus.conftest import wait_until
from tests.integration.eventbus.dead_letter_support import FLAKY_PATH, applied_key, broken_flag_key

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUEUE = "events.test_flaky"
DLQ = "events.test_flaky.dlq"


def _delete_queues() -> None:
    with Connection(settings.BROKER_URL) as conn:
        for queue in (QUEUE, DLQ):
            channel = conn.channel()
            try:
                with contextlib.suppress(Exception):  # not declared yet
                    channel.queue_delete(queue)
            finally:
                with contextlib.suppress(Exception):  # the channel closed itself
                    channel.close()


def _queue_depth(name: str) -> int:
    with Connection(settings.BROKER_URL) as conn:
        return conn.channel().queue_declare(queue=name, passive=True).message_count


@pytest.fixture
def flags():
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    yield client
    client.close()


def _replay(client, dead_letter: DeadLetter, **body) -> dict:
    response = client.post(f"/api/v1/dead-letters/{dead_letter.id}/replay/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _replay_status(replay_id: str) -> str:
    return DeadLetterReplay.objects.get(id=replay_id).status


def test_refused_event_is_archived_and_a_replay_after_the_fix_applies_it_once(
    start_proc, start_subscribers, start_relay, session_factory, user, staff_user, api_client_for, tap, flags
):
    _delete_queues()
    flags.set(broken_flag_key(), "1")
    # The archiver declares the subscriber's DLQ before the subscriber ever ran.
    start_proc("run_deadletter_archiver", ready="archiver consuming", EVENTBUS_SUBSCRIBERS=FLAKY_PATH)
    assert _queue_depth(DLQ) == 0
    subscribers = start_subscribers("--subscriber", FLAKY_PATH)
    start_relay()

    session = session_factory()
    texts = [{"text": "a"}, {"text": "bad", "poison": True}, {"text": "c"}]
    appended = context_services.context_event_append(
        session=session, author=user, events=[EventInput("context_update", d) for d in texts]
    )
    wait_until(lambda: ProcessedEvent.objects.filter(subscriber="test_flaky").count() == 2, what="2 applied")
    wait_until(lambda: DeadLetter.objects.filter(queue=QUEUE).exists(), what="the archived dead letter")

    dead = DeadLetter.objects.get(queue=QUEUE)
    poison_id = dead.task_id
    assert dead.kwargs["data"]["seq"] == appended[1].seq and dead.kwargs["event_id"] == poison_id
    assert dead.dead_letter_queue == DLQ
    assert dead.task_name == "event:context.updated"
    assert dead.reason == "rejected"
    assert dead.exception_class == "ValueError"
    assert "broken flag set" in dead.exception_message and "Traceback" in dead.traceback
    assert dead.x_death and dead.x_death[0]["queue"] == QUEUE
    assert not ProcessedEvent.objects.filter(subscriber="test_flaky", event_id=poison_id).exists()
    assert _queue_depth(DLQ) == 0  # acked off the DLQ once the row was committed

    client = api_client_for(staff_user)
    listed = client.get("/api/v1/dead-letters/", {"queue": QUEUE}).json()
    assert [row["id"] for row in listed["results"]] == [str(dead.id)]

    # A replay while the cause is still there dies again: a new row, linked to the first.
    seen_before_replays = len(tap.drain())
    assert poison_id in [m.properties["message_id"] for m in tap.messages]  # the original went through ``events``
    first = _replay(client, dead)
    assert first["new_task_id"] == poison_id  # the event keeps its id
    wait_until(lambda: DeadLetter.objects.filter(queue=QUEUE, replay_of=dead).exists(), what="the re-death")
    redeath = DeadLetter.objects.get(queue=QUEUE, replay_of=dead)
    assert redeath.task_id == poison_id and redeath.reason == "rejected"
    wait_until(lambda: _replay_status(first["id"]) == ReplayStatus.DEAD_LETTERED, what="replay dead-lettered")

    # The fix, then a replay: applied exactly once by the subscriber process.
    flags.delete(broken_flag_key())
    second = _replay(client, redeath)
    wait_until(
        lambda: ProcessedEvent.objects.filter(subscriber="test_flaky", event_id=poison_id).exists(),
        what="the replayed event applied",
    )
    wait_until(lambda: _replay_status(second["id"]) == ReplayStatus.SUCCEEDED, what="replay succeeded")
    assert flags.get(applied_key(poison_id)) == "1"

    # A forced repeat reaches the subscriber, which drops it by event_id.
    third = _replay(client, redeath, force=True)
    wait_until(lambda: _replay_status(third["id"]) == ReplayStatus.SUCCEEDED, what="forced replay settled")
    time.sleep(0.5)
    assert flags.get(applied_key(poison_id)) == "1"
    assert ProcessedEvent.objects.filter(subscriber="test_flaky").count() == 3
    assert DeadLetter.objects.filter(queue=QUEUE).count() == 2
    # Replays went to the subscriber's queue, never through the ``events`` exchange.
    assert poison_id not in [m.properties["message_id"] for m in tap.drain()[seen_before_replays:]]
    assert "dead-lettered an event" in subscribers.output()
