"""Dead-lettered domain events (``events.<subscriber>.dlq``): decode, archive and replay.

The whole path with real subscriber and archiver processes is in
tests/integration/eventbus/test_event_dead_letter_archive.py; here the
message shapes RabbitMQ delivers from a subscriber's DLQ, and replays against
this run's real RabbitMQ vhost.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.core.management import call_command
from kombu import Connection

from apps.eventbus.contracts import event_build
from apps.eventbus.messages import event_failure_key, is_event_queue
from apps.eventbus.queues import dead_letter_queue, subscriber_queue
from apps.ops.deadletters import services
from apps.ops.models import DeadLetter, DeadLetterReplay, DeadLetterStatus, ReplayStatus

SUBSCRIBER = "test_ops_events"
QUEUE = f"events.{SUBSCRIBER}"


class OpsEventsSubscriber:
    """Registered through EVENTBUS_SUBSCRIBERS for the command test (only its name and patterns are read)."""

    name = SUBSCRIBER
    patterns = ("context.updated",)


def _event(**data: object) -> dict:
    event = event_build(
        event_type="context.updated",
        session_id=uuid.uuid4(),
        user_id=7,
        correlation_id="cid-9",
        data={"seq": 3, "event_type": "note", "data": dict(data)},
        occurred_at=datetime(2026, 1, 2, tzinfo=UTC),
    )
    return event.to_wire()


def _archive(
    envelope: dict | None = None,
    *,
    body: bytes | None = None,
    queue: str = QUEUE,
    count: int = 1,
    extra_headers: dict | None = None,
    properties: dict | None = None,
) -> tuple[DeadLetter, bool]:
    envelope = envelope if envelope is not None else _event()
    headers = {
        "x-death": [
            {
                "count": count,
                "reason": "rejected",
                "queue": queue,
                "exchange": "events",
                "routing-keys": ["context.updated"],
                "time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            }
        ],
        "x-first-death-queue": queue,
        "x-first-death-reason": "rejected",
        **(extra_headers or {}),
    }
    props = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "message_id": envelope.get("event_id", ""),
        "correlation_id": "cid-9",
        "type": "context.updated",
        **(properties or {}),
    }
    return services.dead_letter_archive(
        dead_letter_queue=f"{queue}.dlq",
        body=body if body is not None else json.dumps(envelope).encode(),
        headers=headers,
        properties=props,
    )


# --- decode --------------------------------------------------------------------


def test_decode_of_an_event_envelope():
    envelope = _event(text="hi")
    decoded = services.event_dead_letter_decode(
        body=json.dumps(envelope).encode(), properties={"content_type": "application/json"}
    )
    assert decoded["payload"] == envelope
    assert decoded["problem"] is None and decoded["raw_body"] == ""
    assert decoded["event_id"] == envelope["event_id"]
    assert decoded["event_type"] == "context.updated"
    assert decoded["task_name"] == "event:context.updated"
    assert decoded["correlation_id"] == "cid-9"


def test_decode_of_a_body_that_is_not_json_keeps_it_and_reads_the_properties():
    event_id = str(uuid.uuid4())
    decoded = services.event_dead_letter_decode(
        body=b"\xff not json", properties={"message_id": event_id, "type": "user.action", "correlation_id": "c"}
    )
    assert decoded["problem"] == "body is not valid JSON"
    assert decoded["raw_body"].endswith("not json") and decoded["payload"] == {}
    assert (decoded["event_id"], decoded["task_name"], decoded["correlation_id"]) == (
        event_id,
        "event:user.action",
        "c",
    )


@pytest.mark.parametrize(
    ("body", "properties", "problem"),
    [
        (b"[1, 2]", {}, "body is not a JSON object (an event envelope)"),
        (b"{}", {"content_type": "application/x-python-serialize"}, "content type"),
    ],
)
def test_decode_flags_bodies_that_are_not_an_envelope(body, properties, problem):
    decoded = services.event_dead_letter_decode(body=body, properties=properties)
    assert decoded["problem"].startswith(problem)
    assert decoded["task_name"] == "event:unknown" and decoded["event_id"] == ""


def test_event_queues_are_told_from_work_queues():
    assert is_event_queue("events.activity")
    assert not is_event_queue("events.activity.dlq")
    assert not is_event_queue("ai.batch")


# --- archive -------------------------------------------------------------------


@pytest.mark.django_db
def test_archived_event_row_has_queue_reason_payload_and_the_runners_failure_note():
    envelope = _event(text="boom")
    services.task_failure_record(
        task_id=event_failure_key(queue=QUEUE, event_id=envelope["event_id"]),
        task_name="event:context.updated",
        queue=QUEUE,
        exception_class="ValueError",
        exception_message="cannot apply",
        traceback="Traceback ...",
        attempts=1,
        reason="rejected",
    )
    row, created = _archive(envelope)
    assert created
    assert (row.queue, row.dead_letter_queue, row.reason) == (QUEUE, f"{QUEUE}.dlq", "rejected")
    assert row.task_name == "event:context.updated" and row.task_id == envelope["event_id"]
    assert row.kwargs == envelope and row.args == [] and row.raw_body == ""
    assert row.correlation_id == "cid-9"
    assert (row.exception_class, row.exception_message, row.traceback) == (
        "ValueError",
        "cannot apply",
        "Traceback ...",
    )
    assert row.attempts == 1 and row.x_death[0]["queue"] == QUEUE


@pytest.mark.django_db
def test_archive_of_an_event_without_a_failure_note_leaves_the_exception_empty():
    row, _ = _archive()
    assert row.reason == "rejected" and row.exception_class == "" and row.attempts == 1


@pytest.mark.django_db
def test_archive_of_an_event_body_that_is_not_json_is_a_malformed_message():
    row, _ = _archive({}, body=b"garbage", properties={"message_id": "m-1"})
    assert row.exception_class == "MalformedMessage" and row.raw_body == "garbage"
    assert row.task_id == "m-1" and row.task_name == "event:context.updated"


@pytest.mark.django_db
def test_one_event_dead_in_two_subscribers_and_its_redelivery_and_replay_map_onto_the_right_rows():
    envelope = _event()
    first, created = _archive(envelope)
    again, created_again = _archive(envelope)  # the archiver crashed before its ack
    other, created_other = _archive(envelope, queue="events.other_subscriber")
    replay_id = str(uuid.uuid4())
    redeath, created_redeath = _archive(envelope, extra_headers={"ce_replay_id": replay_id})
    assert created and not created_again and again.id == first.id
    assert created_other and other.queue == "events.other_subscriber"
    assert created_redeath and redeath.id != first.id
    assert DeadLetter.objects.count() == 3


# --- replay --------------------------------------------------------------------


@pytest.fixture
def subscriber_queues() -> Iterator[Connection]:
    conn = Connection(settings.BROKER_URL)
    channel = conn.channel()
    subscriber_queue(SUBSCRIBER, ["context.updated"])(channel).declare()
    dead_letter_queue(QUEUE)(channel).declare()
    channel.queue_purge(QUEUE)
    yield conn
    conn.channel().queue_delete(QUEUE)
    conn.channel().queue_delete(f"{QUEUE}.dlq")
    conn.release()


def _take(conn: Connection, queue: str) -> list:
    from kombu import Queue

    q = Queue(queue, no_declare=True)(conn.channel())
    return list(iter(lambda: q.get(no_ack=True), None))


@pytest.mark.django_db
def test_replay_republishes_the_event_to_its_subscribers_queue_with_its_event_id(subscriber_queues, staff_user):
    envelope = _event()
    row, _ = _archive(envelope)
    replay = services.dead_letter_replay(dead_letter_id=row.id, user=staff_user)
    assert replay.status == ReplayStatus.PUBLISHED and replay.new_task_id == envelope["event_id"]
    [message] = _take(subscriber_queues, QUEUE)
    assert json.loads(message.body) == envelope
    assert message.properties["message_id"] == envelope["event_id"]
    assert message.properties["type"] == "context.updated"
    assert message.headers["ce_replay_id"] == str(replay.id)
    # Starts clean (a quorum queue adds its own x-delivery-count on delivery).
    assert not any(k.startswith(("x-death", "x-first-death", "x-last-death")) for k in message.headers)
    row.refresh_from_db()
    assert row.status == DeadLetterStatus.REPLAYED


@pytest.mark.django_db
def test_replay_to_a_subscriber_queue_that_does_not_exist_fails_and_releases_the_claim(staff_user):
    row, _ = _archive(queue="events.never_declared_subscriber")
    replay = services.dead_letter_replay(dead_letter_id=row.id, user=staff_user)
    assert replay.status == ReplayStatus.PUBLISH_FAILED and "NOT_FOUND" in replay.error
    row.refresh_from_db()
    assert row.status == DeadLetterStatus.NEW


@pytest.mark.django_db
def test_replay_event_dead_letters_command_replays_archived_rows(subscriber_queues, monkeypatch):
    monkeypatch.setenv("EVENTBUS_SUBSCRIBERS", f"{__name__}.OpsEventsSubscriber")
    envelope = _event()
    row, _ = _archive(envelope)
    call_command("replay_event_dead_letters", SUBSCRIBER)
    [message] = _take(subscriber_queues, QUEUE)
    assert json.loads(message.body)["event_id"] == envelope["event_id"]
    assert DeadLetterReplay.objects.get(dead_letter=row).status == ReplayStatus.PUBLISHED
    call_command("replay_event_dead_letters", SUBSCRIBER)  # replayed once unless forced
    assert _take(subscriber_queues, QUEUE) == []
