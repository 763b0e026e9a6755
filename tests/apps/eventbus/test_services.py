"""Outbox writes: validated against the contract, in the caller's transaction."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from apps.common.exceptions import ValidationFailed
from apps.common.logging import set_correlation_id
from apps.eventbus import selectors, services
from apps.eventbus.contracts import event_parse
from apps.eventbus.models import OutboxMessage

pytestmark = pytest.mark.django_db


def test_event_add_writes_a_valid_row_with_the_ambient_correlation_id(session_factory, user):
    session = session_factory()
    OutboxMessage.objects.all().delete()
    token = set_correlation_id("cid-123")
    try:
        event = services.outbox_event_add(
            event_type="context.updated",
            session_id=session.id,
            user_id=user.pk,
            data={"seq": 1, "event_type": "context_update", "data": {"text": "hi"}},
        )
    finally:
        from apps.common.logging import correlation_id

        correlation_id.reset(token)
    row = OutboxMessage.objects.get()
    assert row.message_id == event.event_id
    assert row.routing_key == "context.updated" and row.exchange == "events"
    assert row.correlation_id == "cid-123"
    parsed = event_parse(row.body)
    assert parsed.session_id == session.id and parsed.data["data"] == {"text": "hi"}


def test_invalid_event_is_refused_and_writes_nothing(db):
    with pytest.raises(ValidationFailed) as info:
        services.outbox_event_add(event_type="context.updated", session_id=None, user_id=None, data={"seq": 0})
    assert info.value.code == "invalid_event"
    with pytest.raises(ValidationFailed):
        services.outbox_event_add(event_type="nope.happened", session_id=None, user_id=None, data={})
    assert not OutboxMessage.objects.exists()


def test_bulk_add_is_all_or_none(db):
    good = services.OutboxEvent(event_type="session.closed", session_id=None, user_id=None, data={})
    bad = services.OutboxEvent(event_type="suggestion.feedback", session_id=None, user_id=None, data={})
    with pytest.raises(ValidationFailed):
        services.outbox_events_add_bulk(events=[good, bad])
    assert not OutboxMessage.objects.exists()
    services.outbox_events_add_bulk(events=[good] * 3)
    assert OutboxMessage.objects.count() == 3


def test_rolled_back_transaction_leaves_no_row(db):
    with pytest.raises(RuntimeError), transaction.atomic():
        services.outbox_event_add(event_type="session.closed", session_id=None, user_id=None, data={})
        raise RuntimeError("domain change failed")
    assert not OutboxMessage.objects.exists()


def test_task_add_builds_a_celery_protocol_2_message(db):
    task_id = services.outbox_task_add(
        task_name="ai.generate_suggestions",
        kwargs={"request_id": "r1"},
        queue="ai.realtime",
        correlation_id="c1",
        countdown=5,
    )
    row = OutboxMessage.objects.get(message_id=task_id)
    assert row.kind == "task" and row.exchange == "tasks" and row.routing_key == "ai.realtime"
    assert row.headers["task"] == "ai.generate_suggestions" and row.headers["id"] == task_id
    assert row.headers["ce_correlation_id"] == "c1" and row.correlation_id == "c1" and row.headers["eta"]
    args, kwargs, embed = row.body
    assert args == [] and kwargs == {"request_id": "r1"} and embed["chain"] is None


def test_task_add_refuses_non_json_kwargs_and_unknown_queues(db):
    with pytest.raises(ValidationFailed):
        services.outbox_task_add(task_name="x", kwargs={"when": object()}, queue="ai.batch")
    with pytest.raises(ValidationFailed):
        services.outbox_task_add(task_name="x", kwargs={}, queue="no.such.queue")
    assert not OutboxMessage.objects.exists()


def test_purge_deletes_only_old_published_rows(db):
    services.outbox_events_add_bulk(
        events=[services.OutboxEvent(event_type="session.closed", session_id=None, user_id=None)] * 3
    )
    ids = list(OutboxMessage.objects.values_list("id", flat=True))
    OutboxMessage.objects.filter(id=ids[0]).update(status="published", published_at=timezone.now() - timedelta(days=8))
    OutboxMessage.objects.filter(id=ids[1]).update(status="published", published_at=timezone.now())
    assert services.outbox_purge_published(older_than=timedelta(days=7)) == 1
    assert list(OutboxMessage.objects.values_list("id", flat=True)) == ids[1:]


def test_outbox_lag_reports_oldest_pending_and_counts(db):
    assert selectors.outbox_lag().pending == 0
    services.outbox_event_add(event_type="session.closed", session_id=None, user_id=None, data={})
    OutboxMessage.objects.update(created_at=timezone.now() - timedelta(seconds=30))
    services.outbox_event_add(event_type="session.closed", session_id=None, user_id=None, data={})
    OutboxMessage.objects.filter(id=OutboxMessage.objects.order_by("id").last().id).update(status="parked")
    lag = selectors.outbox_lag()
    assert lag.pending == 1 and lag.parked == 1
    assert 29 < lag.oldest_pending_age_seconds < 120


def test_requeue_puts_parked_rows_back(db):
    services.outbox_event_add(event_type="session.closed", session_id=None, user_id=None, data={})
    OutboxMessage.objects.update(status="parked", attempts=5, last_error="unroutable")
    assert services.outbox_rows_requeue(ids=OutboxMessage.objects.values_list("id", flat=True)) == 1
    row = OutboxMessage.objects.get()
    assert row.status == "pending" and row.attempts == 0


def test_processed_events_purge_keeps_recent_records(db):
    import uuid

    from apps.eventbus.models import ProcessedEvent

    old = ProcessedEvent.objects.create(subscriber="s", event_id=uuid.uuid4(), event_type="session.closed")
    ProcessedEvent.objects.filter(pk=old.pk).update(processed_at=timezone.now() - timedelta(days=30))
    ProcessedEvent.objects.create(subscriber="s", event_id=uuid.uuid4(), event_type="session.closed")
    assert services.processed_events_purge(older_than=timedelta(days=14)) == 1
    assert ProcessedEvent.objects.count() == 1


def test_admin_lists_parked_rows_and_requeues_them(db, client, staff_user):
    services.outbox_event_add(event_type="session.closed", session_id=None, user_id=None, data={})
    OutboxMessage.objects.update(status="parked", attempts=5, last_error="unroutable: events/x")
    client.force_login(staff_user)
    page = client.get("/admin/eventbus/outboxmessage/?status__exact=parked")
    assert page.status_code == 200 and b"unroutable" in page.content
    row = OutboxMessage.objects.get()
    response = client.post("/admin/eventbus/outboxmessage/", {"action": "requeue_parked", "_selected_action": [row.pk]})
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.status == "pending" and row.attempts == 0
    assert client.get(f"/admin/eventbus/outboxmessage/{row.pk}/change/").status_code == 200
