from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class OutboxMessage(models.Model):
    """One message to publish once its transaction has committed.

    Written by services in the same transaction as the domain change; the relay
    publishes pending rows in ``id`` order and marks them published. A row that
    keeps failing (unroutable, nacked) is parked for an operator, never retried
    forever. An insert fires ``NOTIFY eventbus_outbox`` (a trigger, see
    migration 0002) so the relay wakes at commit instead of polling.
    """

    class Kind(models.TextChoices):
        EVENT = "event", "Domain event"
        TASK = "task", "Celery task"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PUBLISHED = "published", "Published"
        PARKED = "parked", "Parked"

    id = models.BigAutoField(primary_key=True)
    # The AMQP message id: the event id for events, the task id for tasks.
    message_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    exchange = models.CharField(max_length=64)
    routing_key = models.CharField(max_length=128)
    headers = models.JSONField(default=dict, blank=True)
    body = models.JSONField()
    correlation_id = models.CharField(max_length=64, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    # The event's occurred_at (set by the service, so lag is measured from the
    # domain change, not from the insert).
    created_at = models.DateTimeField(default=timezone.now)
    # Backoff after a per-row failure: the relay skips the row until then.
    available_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # The relay's claim query scans only pending rows, in id order.
            models.Index(fields=["id"], name="outbox_pending_idx", condition=Q(status="pending")),
            models.Index(fields=["status", "published_at"], name="outbox_status_published_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.id} {self.kind} {self.routing_key} ({self.status})"


class ProcessedEvent(models.Model):
    """Which events a subscriber has applied: the unique constraint is the dedupe."""

    id = models.BigAutoField(primary_key=True)
    subscriber = models.CharField(max_length=64)
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=64)
    # clock_timestamp(), not now(): the moment of the insert, just before commit
    # (the benchmark's end-to-end lag reads it).
    processed_at = models.DateTimeField(db_default=models.Func(function="clock_timestamp"))

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subscriber", "event_id"], name="processed_event_unique_subscriber_event"),
        ]
        indexes = [models.Index(fields=["processed_at"], name="processed_event_at_idx")]

    def __str__(self) -> str:
        return f"{self.subscriber}:{self.event_id}"
