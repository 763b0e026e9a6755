from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.common.models import BaseModel


class Session(BaseModel):
    class State(models.TextChoices):
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"

    title = models.CharField(max_length=200)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_sessions")
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN, db_index=True)
    metadata = models.JSONField(default=dict, blank=True)
    # The last seq handed out. An append bumps it with UPDATE ... RETURNING in the
    # statement that inserts its events (apps/context/services.py, _APPEND_SQL):
    # appends to one session serialise on the row lock, and a rollback returns
    # the numbers, so seq stays gap-free.
    last_seq = models.BigIntegerField(default=0, editable=False)
    last_activity_at = models.DateTimeField(auto_now_add=True, db_index=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.title} ({self.id})"


class Participant(BaseModel):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        EDITOR = "editor", "Editor"
        VIEWER = "viewer", "Viewer"

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="participants")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="participations")
    role = models.CharField(max_length=16, choices=Role.choices)
    joined_at = models.DateTimeField(auto_now_add=True)
    left_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["joined_at"]
        constraints = [models.UniqueConstraint(fields=["session", "user"], name="participant_unique_session_user")]
        indexes = [models.Index(fields=["user", "left_at"])]

    @property
    def is_active(self) -> bool:
        return self.left_at is None

    @property
    def can_write(self) -> bool:
        return self.is_active and self.role in (self.Role.OWNER, self.Role.EDITOR)

    def __str__(self) -> str:
        return f"{self.user} in {self.session_id} as {self.role}"


class ContextEvent(models.Model):
    class EventType(models.TextChoices):
        CONTEXT_UPDATE = "context_update", "Context update"
        USER_ACTION = "user_action", "User action"
        NOTE = "note", "Note"

    id = models.BigAutoField(primary_key=True)
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField(editable=False)
    event_type = models.CharField(max_length=32, choices=EventType.choices)
    data = models.JSONField(default=dict)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    client_msg_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="context_event_unique_session_seq"),
            # A client retrying the same message id gets the stored event back.
            models.UniqueConstraint(
                fields=["session", "client_msg_id"],
                condition=~Q(client_msg_id=""),
                name="context_event_unique_client_msg_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.seq} {self.event_type}"


class UserPreference(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="preference"
    )
    ai_enabled = models.BooleanField(default=True)
    suggestion_kinds = models.JSONField(default=list, blank=True)
    data = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"preferences of {self.user}"


class IdempotencyKey(BaseModel):
    """A replay record for ``Idempotency-Key`` on event appends.

    Created (``in_progress``) in its own committed transaction before the work,
    completed with the response after it; the unique (user, key) constraint is
    what makes two concurrent requests with one key collide.
    """

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="idempotency_keys")
    key = models.CharField(max_length=255)
    scope = models.CharField(max_length=255, help_text="The request path the key was used on.")
    request_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IN_PROGRESS)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_unique_user_key")]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key}"
