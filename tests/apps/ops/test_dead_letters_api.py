"""Dead-letter REST API, archive service and retention.

Rows are made by ``dead_letter_archive`` from the message shape RabbitMQ
delivers from a DLQ (the real round trip is in tests/integration/workers);
replays publish to this run's real RabbitMQ vhost.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from kombu import Connection

from apps.eventbus.queues import declare_topology
from apps.ops.deadletters import services
from apps.ops.models import DeadLetter, DeadLetterReplay, TaskFailure

URL = "/api/v1/dead-letters/"


def _queue_depth(name: str) -> int:
    with Connection(settings.BROKER_URL) as conn:
        return conn.default_channel.queue_declare(queue=name, passive=True).message_count


@pytest.fixture(autouse=True)
def _purge_work_queues() -> Iterator[None]:
    """Replayed messages must not reach the workers of the integration tests."""
    yield
    from apps.eventbus.queues import Queue

    with Connection(settings.BROKER_URL) as conn:
        channel = conn.default_channel
        for queue in Queue:
            try:
                channel.queue_purge(queue.value)
            except Exception:  # noqa: BLE001 - a queue never declared has nothing to purge
                channel = conn.channel()


def archive(
    *,
    task_name: str = "test.api_task",
    queue: str = "ai.batch",
    reason: str = "rejected",
    task_id: str | None = None,
    count: int = 1,
    kwargs: dict | None = None,
    failure: dict | None = None,
) -> DeadLetter:
    task_id = task_id or str(uuid.uuid4())
    if failure is not None:
        services.task_failure_record(task_id=task_id, task_name=task_name, queue=queue, **failure)
    headers = {
        "task": task_name,
        "id": task_id,
        "root_id": task_id,
        "retries": 0,
        "ce_attempt": 1,
        "ce_correlation_id": "cid-1",
        "x-death": [
            {
                "count": count,
                "reason": reason,
                "queue": queue,
                "exchange": "tasks",
                "routing-keys": [queue],
                "time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            }
        ],
        "x-first-death-queue": queue,
        "x-first-death-reason": reason,
    }
    body = (
        f'[[], {{"tag": "t", "n": {len(task_id)}}}, {{}}]'
        if kwargs is None
        else __import__("json").dumps([[], kwargs, {}])
    )
    dead_letter, _ = services.dead_letter_archive(
        dead_letter_queue=f"{queue}.dlq",
        body=body.encode(),
        headers=headers,
        properties={"content_type": "application/json"},
    )
    return dead_letter


PERMANENT = {
    "exception_class": "PermanentError",
    "exception_message": "bad input 42",
    "traceback": "Traceback (most recent call last):\n  ...\nPermanentError: bad input 42\n",
    "attempts": 1,
    "reason": "rejected",
}


def test_operators_only(api_client, client) -> None:
    assert api_client.get(URL).status_code == 403
    assert api_client.get(URL).json()["code"] == "permission_denied"
    assert client.get(URL).status_code == 401


def test_archive_stores_reason_traceback_and_is_idempotent(db) -> None:
    task_id = str(uuid.uuid4())
    first = archive(task_id=task_id, failure=PERMANENT)
    again = archive(task_id=task_id, failure=PERMANENT)
    assert first.id == again.id and DeadLetter.objects.count() == 1
    assert first.reason == "rejected" and first.exception_class == "PermanentError"
    assert "PermanentError: bad input 42" in first.traceback
    assert first.kwargs == {"tag": "t", "n": 36}
    assert first.x_death[0]["time"].startswith("2026-01-02")
    assert first.first_failed_at is not None and first.correlation_id == "cid-1"
    # the same message dead-lettered a second time (after a replay of the same id) is a new row
    assert archive(task_id=task_id, count=2).id != first.id


def test_archive_maps_broker_reasons(db) -> None:
    assert archive(reason="delivery_limit").reason == "delivery_limit"
    assert archive(reason="expired").reason == "expired"
    exhausted = archive(
        failure={**PERMANENT, "exception_class": "TransientError", "reason": "retries_exhausted", "attempts": 5}
    )
    assert exhausted.reason == "retries_exhausted" and exhausted.attempts == 5


def test_equal_failures_share_a_fingerprint(db) -> None:
    a = archive(failure={**PERMANENT, "exception_message": "row 17 missing"})
    b = archive(failure={**PERMANENT, "exception_message": "row 99 missing"})
    c = archive(failure={**PERMANENT, "exception_class": "KeyError", "exception_message": "row 17 missing"})
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_list_filters_and_detail(api_client_for, staff_user) -> None:
    client = api_client_for(staff_user)
    a = archive(task_name="test.alpha", queue="ai.batch", failure=PERMANENT)
    archive(task_name="test.beta", queue="ai.realtime", reason="delivery_limit")
    archive(task_name="test.beta", queue="maintenance", reason="expired")

    body = client.get(URL).json()
    assert len(body["results"]) == 3 and "next" in body
    assert [r["task_name"] for r in client.get(URL, {"queue": "ai.batch"}).json()["results"]] == ["test.alpha"]
    assert len(client.get(URL, {"task_name": "test.beta"}).json()["results"]) == 2
    assert [r["queue"] for r in client.get(URL, {"reason": "expired"}).json()["results"]] == ["maintenance"]
    assert [r["id"] for r in client.get(URL, {"fingerprint": a.fingerprint}).json()["results"]] == [str(a.id)]

    bad = client.get(URL, {"reason": "nope"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid" and "reason" in bad.json()["details"]
    assert client.get(URL, {"colour": "red"}).status_code == 400

    detail = client.get(f"{URL}{a.id}/").json()
    assert detail["exception"] == "PermanentError: bad input 42"
    assert "Traceback" in detail["traceback"]
    assert detail["replays"] == [] and detail["attempts"] == 1 and detail["fingerprint"] == a.fingerprint
    missing = client.get(f"{URL}{uuid.uuid4()}/")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_replay_publishes_once_unless_forced_and_is_audited(api_client_for, staff_user) -> None:
    client = api_client_for(staff_user)
    dead = archive(task_name="test.api_task", queue="ai.batch", failure=PERMANENT)
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)
    before = _queue_depth("ai.batch")

    first = client.post(f"{URL}{dead.id}/replay/", {}, format="json")
    assert first.status_code == 201, first.json()
    assert first.json()["status"] == "published" and first.json()["requested_by"] == staff_user.username
    assert _queue_depth("ai.batch") == before + 1

    again = client.post(f"{URL}{dead.id}/replay/", {}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "already_replayed"
    assert _queue_depth("ai.batch") == before + 1

    forced = client.post(f"{URL}{dead.id}/replay/", {"force": True}, format="json")
    assert forced.status_code == 201 and forced.json()["forced"] is True
    assert _queue_depth("ai.batch") == before + 2
    replays = client.get(f"{URL}{dead.id}/").json()["replays"]
    assert len(replays) == 2 and {r["status"] for r in replays} == {"published"}
    assert len({r["new_task_id"] for r in replays}) == 2 and dead.task_id not in {r["new_task_id"] for r in replays}
    assert client.post(f"{URL}{dead.id}/replay/", {"force": "maybe"}, format="json").status_code == 400
    assert client.post(f"{URL}{uuid.uuid4()}/replay/", {}, format="json").status_code == 404


def test_discard_then_replay_needs_force(api_client_for, staff_user) -> None:
    client = api_client_for(staff_user)
    dead = archive(failure=PERMANENT)
    response = client.post(f"{URL}{dead.id}/discard/")
    assert response.status_code == 200 and response.json()["status"] == "discarded"
    refused = client.post(f"{URL}{dead.id}/replay/", {}, format="json")
    assert refused.status_code == 409 and refused.json()["code"] == "discarded"
    assert not DeadLetterReplay.objects.exists()


def test_bulk_replay_by_filter(api_client_for, staff_user) -> None:
    client = api_client_for(staff_user)
    same = [archive(task_name="test.bulk", failure=PERMANENT) for _ in range(3)]
    other = archive(task_name="test.other", failure=PERMANENT)
    assert client.post(f"{URL}replay/", {}, format="json").status_code == 400
    response = client.post(f"{URL}replay/", {"fingerprint": same[0].fingerprint, "limit": 2}, format="json")
    assert response.status_code == 200, response.json()
    assert len(response.json()["replayed"]) == 2 and response.json()["truncated"] is True
    response = client.post(f"{URL}replay/", {"task_name": "test.bulk"}, format="json")
    assert len(response.json()["replayed"]) == 1 and response.json()["truncated"] is False
    assert DeadLetterReplay.objects.count() == 3
    assert not DeadLetterReplay.objects.filter(dead_letter=other).exists()


def test_replay_is_rate_limited(api_client_for, staff_user) -> None:
    client = api_client_for(staff_user)
    dead = [archive(failure=PERMANENT) for _ in range(3)]
    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "dead_letter_replay": "2/min"}
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}):
        codes = [client.post(f"{URL}{d.id}/replay/", {}, format="json").status_code for d in dead]
        bulk = client.post(f"{URL}replay/", {"queue": "ai.batch"}, format="json")
    assert codes == [201, 201, 429]
    assert bulk.status_code == 429 and bulk.json()["code"] == "rate_limited"
    assert DeadLetterReplay.objects.count() == 2


def test_purge_deletes_old_rows_only(db) -> None:
    old = archive(failure=PERMANENT)
    DeadLetter.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(days=40))
    TaskFailure.objects.update(created_at=timezone.now() - timedelta(days=40))
    fresh = archive()
    assert services.dead_letter_purge(older_than=timezone.now() - timedelta(days=30)) == 1
    assert list(DeadLetter.objects.values_list("id", flat=True)) == [fresh.id]
    assert not TaskFailure.objects.exists()
    with pytest.raises(Exception, match="timezone-aware"):
        services.dead_letter_purge(older_than=datetime(2020, 1, 1))  # noqa: DTZ001 - the point of the test
