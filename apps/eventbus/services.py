"""Writes for the event bus: outbox rows, retention, operator actions.

``outbox_event_add`` / ``outbox_events_add_bulk`` / ``outbox_task_add`` write
rows in the caller's transaction: when it rolls back, nothing is published;
when it commits, the relay publishes every row at least once. Call them inside
the same ``transaction.atomic()`` as the domain change they describe.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from apps.common.exceptions import ValidationFailed
from apps.common.logging import get_correlation_id
from apps.eventbus.contracts import ContractError, Event, event_build
from apps.eventbus.messages import HEADER_CORRELATION_ID, PayloadTooLargeError, build_task_message
from apps.eventbus.models import OutboxMessage

EVENTS_EXCHANGE_NAME = "events"
TASKS_EXCHANGE_NAME = "tasks"
# The AMQP header (on events and tasks) that carries the correlation id, the
# one workers.base reads; for tasks the AMQP ``correlation_id`` property is the
# task id, as Celery expects.
CORRELATION_HEADER = HEADER_CORRELATION_ID


@dataclass(frozen=True)
class OutboxEvent:
    """One event for ``outbox_events_add_bulk``."""

    event_type: str
    session_id: uuid.UUID | str | None
    user_id: int | None
    data: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None


def _build(
    *,
    event_type: str,
    session_id: Any,
    user_id: int | None,
    data: dict[str, Any],
    correlation_id: str | None,
    occurred_at: datetime,
) -> Event:
    try:
        return event_build(
            event_type=event_type,
            session_id=session_id,
            user_id=user_id,
            data=data,
            occurred_at=occurred_at,
            correlation_id=correlation_id if correlation_id is not None else get_correlation_id(),
        )
    except ContractError as exc:
        raise ValidationFailed(str(exc), code="invalid_event", details={"errors": exc.errors}) from exc


def _event_row(event: Event) -> OutboxMessage:
    return OutboxMessage(
        message_id=event.event_id,
        kind=OutboxMessage.Kind.EVENT,
        exchange=EVENTS_EXCHANGE_NAME,
        routing_key=event.event_type,
        headers={
            "event_type": event.event_type,
            "version": event.version,
            CORRELATION_HEADER: event.correlation_id or "",
        },
        body=event.to_wire(),
        correlation_id=event.correlation_id or "",
        created_at=event.occurred_at,
        available_at=event.occurred_at,
    )


def outbox_event_add(
    *,
    event_type: str,
    session_id: uuid.UUID | str | None,
    user_id: int | None,
    data: dict[str, Any],
    correlation_id: str | None = None,
) -> Event:
    """Validate one event against its contract and write it to the outbox in the caller's transaction."""
    event = _build(
        event_type=event_type,
        session_id=session_id,
        user_id=user_id,
        data=data,
        correlation_id=correlation_id,
        occurred_at=timezone.now(),
    )
    _event_row(event).save(force_insert=True)
    return event


_COPY_COLUMNS = (
    "message_id",
    "kind",
    "exchange",
    "routing_key",
    "headers",
    "body",
    "correlation_id",
    "status",
    "attempts",
    "last_error",
    "created_at",
    "available_at",
)


def outbox_events_add_bulk(*, events: Sequence[OutboxEvent]) -> list[Event]:
    """Validate and write many events in the caller's transaction (all or none).

    Rows go in with ``COPY ... FROM STDIN``: measured on a 500-event batch it
    is several times cheaper than ``bulk_create`` (which spends most of its
    time quoting JSON arrays client-side). COPY fires the insert trigger, so
    the relay is notified at commit as for any insert.
    """
    if not events:
        return []
    now = timezone.now()
    built = [
        _build(
            event_type=e.event_type,
            session_id=e.session_id,
            user_id=e.user_id,
            data=e.data,
            correlation_id=e.correlation_id,
            occurred_at=now,
        )
        for e in events
    ]
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    copy_sql = f"COPY eventbus_outboxmessage ({', '.join(_COPY_COLUMNS)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(copy_sql) as copy:
        for event in built:
            cid = event.correlation_id or ""
            copy.write_row(
                (
                    event.event_id,
                    OutboxMessage.Kind.EVENT.value,
                    EVENTS_EXCHANGE_NAME,
                    event.event_type,
                    dumps({"event_type": event.event_type, "version": event.version, CORRELATION_HEADER: cid}),
                    dumps(event.to_wire()),
                    cid,
                    OutboxMessage.Status.PENDING.value,
                    0,
                    "",
                    now,
                    now,
                )
            )
    return built


def outbox_task_add(
    *,
    task_name: str,
    kwargs: dict[str, Any],
    queue: str,
    correlation_id: str | None = None,
    countdown: float | None = None,
    task_id: str | None = None,
) -> str:
    """Write a Celery task message to the outbox; the relay sends it to ``tasks`` with routing key ``queue``.

    The task is sent if and only if the caller's transaction commits. The
    message is built by ``apps.eventbus.messages.build_task_message`` (Celery protocol 2,
    JSON, correlation id and attempt headers), so it is exactly what
    ``apply_async`` would send. ``countdown`` sets the protocol's ``eta``
    header: the worker holds the task until then. Returns the task id.
    """
    if not isinstance(kwargs, dict):
        raise ValidationFailed("Task kwargs must be an object.", code="invalid_task")
    cid = correlation_id if correlation_id is not None else get_correlation_id()
    try:
        message = build_task_message(task_name, kwargs, correlation_id=cid, task_id=task_id, queue=queue)
    except (TypeError, ValueError) as exc:
        # ValueError: an unknown queue (the Queue enum) or kwargs that are not JSON.
        raise ValidationFailed("Invalid task message.", code="invalid_task", details={"error": str(exc)}) from exc
    except PayloadTooLargeError as exc:
        raise ValidationFailed(str(exc), code="task_too_large") from exc
    now = timezone.now()
    headers = dict(message.headers)
    if countdown:
        headers["eta"] = (now + timedelta(seconds=countdown)).isoformat()
    OutboxMessage.objects.create(
        message_id=uuid.UUID(message.task_id),
        kind=OutboxMessage.Kind.TASK,
        exchange=message.exchange,
        routing_key=message.routing_key,
        headers=json.loads(json.dumps(headers, default=str)),
        body=json.loads(message.body),
        correlation_id=headers.get(CORRELATION_HEADER, "") or "",
        created_at=now,
        available_at=now,
    )
    return message.task_id


def outbox_purge_published(*, older_than: timedelta | datetime) -> int:
    """Delete published rows published before the cut-off (the retention job). Returns rows deleted.

    Deletes in chunks of 5000 so a large backlog never holds one long lock.
    """
    cutoff = timezone.now() - older_than if isinstance(older_than, timedelta) else older_than
    total = 0
    while True:
        with transaction.atomic():
            ids = list(
                OutboxMessage.objects.filter(
                    status=OutboxMessage.Status.PUBLISHED, published_at__lt=cutoff
                ).values_list("id", flat=True)[:5000]
            )
            if not ids:
                return total
            deleted, _ = OutboxMessage.objects.filter(id__in=ids).delete()
            total += deleted


def processed_events_purge(*, older_than: timedelta) -> int:
    """Forget dedupe records older than any redelivery could be (the retention job). Returns rows deleted."""
    from apps.eventbus.models import ProcessedEvent

    cutoff = timezone.now() - older_than
    total = 0
    while True:
        with transaction.atomic():
            ids = list(ProcessedEvent.objects.filter(processed_at__lt=cutoff).values_list("id", flat=True)[:5000])
            if not ids:
                return total
            deleted, _ = ProcessedEvent.objects.filter(id__in=ids).delete()
            total += deleted


def outbox_rows_requeue(*, ids: Iterable[int]) -> int:
    """Operator action: put parked rows back in line (attempts reset). Returns rows requeued."""
    now = timezone.now()
    with transaction.atomic():
        count = OutboxMessage.objects.filter(id__in=list(ids), status=OutboxMessage.Status.PARKED).update(
            status=OutboxMessage.Status.PENDING, attempts=0, available_at=now, last_error=""
        )
        if count:
            # Wake the relays now rather than at their next poll.
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_notify('eventbus_outbox', '')")
    return count
