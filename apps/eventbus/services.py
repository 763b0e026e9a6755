"""Writes for the event bus: outbox rows, retention, operator actions.

``outbox_event_add`` / ``outbox_events_add_bulk`` / ``outbox_task_add`` write
rows in the caller's transaction: when it rolls back, nothing is published;
when it commits, the relay publishes every row at least once. Call them inside
the same ``transaction.atomic()`` as the domain change they describe.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.common.exceptions import ValidationFailed
from apps.common.logging import get_correlation_id
from apps.eventbus.contracts import ContractError, Event, event_build
from apps.eventbus.models import OutboxMessage

EVENTS_EXCHANGE_NAME = "events"
TASKS_EXCHANGE_NAME = "tasks"
# The AMQP header (on events and tasks) that carries the correlation id; for
# tasks the AMQP ``correlation_id`` property is the task id, as Celery expects.
CORRELATION_HEADER = "correlation_id"


@dataclass(frozen=True)
class OutboxEvent:
    """One event for ``outbox_events_add_bulk``."""

    event_type: str
    session_id: uuid.UUID | str | None
    user_id: int | None
    data: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None


def _build(
    *, event_type: str, session_id: Any, user_id: int | None, data: dict[str, Any], correlation_id: str | None,
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
        headers={"event_type": event.event_type, "version": event.version,
                 CORRELATION_HEADER: event.correlation_id or ""},
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
    event = _build(event_type=event_type, session_id=session_id, user_id=user_id, data=data,
                   correlation_id=correlation_id, occurred_at=timezone.now())
    _event_row(event).save(force_insert=True)
    return event


def outbox_events_add_bulk(*, events: Sequence[OutboxEvent]) -> list[Event]:
    """Validate and write many events with one multi-row INSERT (all or none)."""
    if not events:
        return []
    now = timezone.now()
    built = [
        _build(event_type=e.event_type, session_id=e.session_id, user_id=e.user_id, data=e.data,
               correlation_id=e.correlation_id, occurred_at=now)
        for e in events
    ]
    # 1000 rows per INSERT keeps each statement well under PostgreSQL's
    # 65535-parameter limit (13 columns a row).
    OutboxMessage.objects.bulk_create([_event_row(e) for e in built], batch_size=1000)
    return built


def _task_message(
    *, task_name: str, task_id: str, kwargs: dict[str, Any], correlation_id: str, eta: datetime | None
) -> tuple[dict[str, Any], list[Any]]:
    """Headers and body of a Celery protocol-2 message (JSON), as ``apply_async`` would send it."""
    kwargsrepr = repr(kwargs)
    headers = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "shadow": None,
        "eta": eta.isoformat() if eta else None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": kwargsrepr[:1024],
        "origin": "outbox-relay",
        "ignore_result": False,
        "stamped_headers": None,
        "stamps": {},
        CORRELATION_HEADER: correlation_id,
    }
    body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return headers, body


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

    The task is sent if and only if the caller's transaction commits. Returns the task id.
    """
    if not isinstance(kwargs, dict):
        raise ValidationFailed("Task kwargs must be an object.", code="invalid_task")
    try:
        import json

        json.dumps(kwargs)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed("Task kwargs must be JSON-serialisable.", code="invalid_task",
                               details={"error": str(exc)}) from exc
    task_uuid = uuid.UUID(task_id) if task_id else uuid.uuid4()
    cid = correlation_id if correlation_id is not None else (get_correlation_id() or "")
    now = timezone.now()
    eta = now + timedelta(seconds=countdown) if countdown else None
    headers, body = _task_message(task_name=task_name, task_id=str(task_uuid), kwargs=kwargs, correlation_id=cid,
                                  eta=eta)
    OutboxMessage.objects.create(
        message_id=task_uuid,
        kind=OutboxMessage.Kind.TASK,
        exchange=TASKS_EXCHANGE_NAME,
        routing_key=queue,
        headers=headers,
        body=body,
        correlation_id=cid,
        created_at=now,
        available_at=now,
    )
    return str(task_uuid)


def outbox_purge_published(*, older_than: timedelta | datetime) -> int:
    """Delete published rows published before the cut-off (the retention job). Returns rows deleted.

    Deletes in chunks of 5000 so a large backlog never holds one long lock.
    """
    cutoff = timezone.now() - older_than if isinstance(older_than, timedelta) else older_than
    total = 0
    while True:
        with transaction.atomic():
            ids = list(
                OutboxMessage.objects.filter(status=OutboxMessage.Status.PUBLISHED, published_at__lt=cutoff)
                .values_list("id", flat=True)[:5000]
            )
            if not ids:
                return total
            deleted, _ = OutboxMessage.objects.filter(id__in=ids).delete()
            total += deleted


def outbox_rows_requeue(*, ids: Iterable[int]) -> int:
    """Operator action: put parked rows back in line (attempts reset). Returns rows requeued."""
    now = timezone.now()
    return OutboxMessage.objects.filter(id__in=list(ids), status=OutboxMessage.Status.PARKED).update(
        status=OutboxMessage.Status.PENDING, attempts=0, available_at=now, last_error=""
    )
