"""Reads for the event bus: outbox lag for monitoring."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection

from apps.eventbus.models import OutboxMessage


@dataclass(frozen=True)
class OutboxLag:
    oldest_pending_age_seconds: float
    pending: int
    parked: int


def outbox_lag() -> OutboxLag:
    """Age of the oldest unpublished row (0 when none), pending and parked counts.

    One query over the partial pending index; cheap enough for every scrape.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT
              COALESCE(EXTRACT(EPOCH FROM clock_timestamp()
                                   - MIN(created_at) FILTER (WHERE status = 'pending')), 0),
              COUNT(*) FILTER (WHERE status = 'pending'),
              COUNT(*) FILTER (WHERE status = 'parked')
            FROM eventbus_outboxmessage
            WHERE status IN ('pending', 'parked')
            """
        )
        age, pending, parked = cursor.fetchone()
    return OutboxLag(oldest_pending_age_seconds=max(float(age or 0), 0.0), pending=int(pending), parked=int(parked))


def outbox_message_list(*, status: str | None = None):  # noqa: ANN201 - a QuerySet
    qs = OutboxMessage.objects.all()
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("id")
