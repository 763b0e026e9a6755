"""Dead letters, their replays, task failure notes, canary runs, paused queues and the audit of fleet actions."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.common.models import BaseModel


class DeadLetterReason(models.TextChoices):
    RETRIES_EXHAUSTED = "retries_exhausted"
    REJECTED = "rejected"
    DELIVERY_LIMIT = "delivery_limit"
    EXPIRED = "expired"


class DeadLetterStatus(models.TextChoices):
    NEW = "new"
    REPLAYED = "replayed"
    DISCARDED = "discarded"


class DeadLetter(BaseModel):
    """One message drained from a ``*.dlq`` queue."""

    # Unique per death of one message (task id or message id + the x-death
    # count): a redelivered DLQ message maps onto the same row.
    message_key = models.CharField(max_length=300, unique=True)
    queue = models.CharField(max_length=200, db_index=True)
    dead_letter_queue = models.CharField(max_length=200)
    task_name = models.CharField(max_length=200, blank=True, db_index=True)
    task_id = models.CharField(max_length=200, blank=True, db_index=True)
    correlation_id = models.CharField(max_length=100, blank=True)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    # The body as received when it was not valid JSON (kept for the operator).
    raw_body = models.TextField(blank=True)
    headers = models.JSONField(default=dict, blank=True)
    properties = models.JSONField(default=dict, blank=True)
    x_death = models.JSONField(default=list, blank=True)
    exception_class = models.CharField(max_length=200, blank=True)
    exception_message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    reason = models.CharField(max_length=32, choices=DeadLetterReason.choices, db_index=True)
    first_failed_at = models.DateTimeField(null=True, blank=True)
    last_failed_at = models.DateTimeField(null=True, blank=True)
    fingerprint = models.CharField(max_length=64, db_index=True)
    status = models.CharField(
        max_length=16, choices=DeadLetterStatus.choices, default=DeadLetterStatus.NEW, db_index=True
    )
    # Set when this message was itself published by a replay.
    replay_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="redeaths")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["queue", "reason", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.task_name or '?'} [{self.reason}] {self.task_id}"


class ReplayStatus(models.TextChoices):
    PENDING = "pending"
    PUBLISHED = "published"
    PUBLISH_FAILED = "publish_failed"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"


class DeadLetterReplay(BaseModel):
    """Audit of one replay: who, when, and how it ended."""

    dead_letter = models.ForeignKey(DeadLetter, on_delete=models.CASCADE, related_name="replays")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    forced = models.BooleanField(default=False)
    new_task_id = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=ReplayStatus.choices, default=ReplayStatus.PENDING)
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]


class TaskFailure(BaseModel):
    """Why a task was rejected, written by the worker before the reject; joined by the archiver."""

    task_id = models.CharField(max_length=200, unique=True)
    task_name = models.CharField(max_length=200, blank=True)
    queue = models.CharField(max_length=200, blank=True)
    exception_class = models.CharField(max_length=200, blank=True)
    exception_message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    reason = models.CharField(max_length=32, blank=True)


class CanaryMode(models.TextChoices):
    OK = "ok"
    FAIL = "fail"
    CRASH = "crash"
    SLOW = "slow"


class CanaryStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"


class CanaryRun(BaseModel):
    mode = models.CharField(max_length=8, choices=CanaryMode.choices)
    status = models.CharField(max_length=16, choices=CanaryStatus.choices, default=CanaryStatus.PENDING)
    task_id = models.CharField(max_length=200, blank=True, db_index=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    attempts = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]


class Fleet(models.Model):
    """No table: the holder of the fleet permissions.

    ``ops.view_fleet``: queue figures, scaling advice, running and scheduled tasks,
    the fleet pages. ``ops.change_fleet``: revoke a task, pause, resume or purge a queue.
    """

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_fleet", "Can view queue figures and scaling advice"),
            ("change_fleet", "Can revoke tasks and pause, resume or purge queues"),
        ]

    def __str__(self) -> str:
        return "fleet"


class PausedQueue(BaseModel):
    """A work queue no worker consumes until it is resumed; workers read these rows when they start."""

    queue = models.CharField(max_length=200, unique=True)
    paused_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["queue"]

    def __str__(self) -> str:
        return self.queue


class FleetActionKind(models.TextChoices):
    REVOKE = "revoke", "revoke"
    PAUSE = "pause", "pause"
    RESUME = "resume", "resume"
    PURGE = "purge", "purge"


class FleetAction(BaseModel):
    """Audit of one fleet control action: who, what, on which task or queue, and what came of it."""

    action = models.CharField(max_length=16, choices=FleetActionKind.choices, db_index=True)
    target = models.CharField(max_length=200, db_index=True)  # a task id or a queue name
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["action", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.action} {self.target}"
