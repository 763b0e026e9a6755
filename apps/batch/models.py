"""Batch job runs, the daily activity rollups they produce, and the live activity counters.

Writes go through ``apps.batch.services``; reads through ``apps.batch.selectors``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.common.models import BaseModel


class JobRun(BaseModel):
    """One execution of a named batch job, resumable from its checkpoint.

    A partial unique constraint allows one ``running`` row per job name: that
    row is the "a job cannot run twice at once" guarantee. Liveness comes from
    a PostgreSQL advisory lock held by the process doing the work (see
    ``apps.batch.jobs``): a ``running`` row whose lock nobody holds belongs to
    a process that died, and the next start resumes it from ``checkpoint``.
    """

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    job_name = models.CharField(max_length=100, db_index=True)
    parameters = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING, db_index=True)
    trigger = models.CharField(max_length=32, default="manual", help_text="beat, manual (run_job), task.")
    progress_done = models.BigIntegerField(default=0)
    progress_total = models.BigIntegerField(null=True, blank=True)
    # What the running step reports while it works ({"unit": "epoch", "done":
    # 2, "total": 8, "loss": ...}), written outside the step's transaction by
    # ``services.job_run_report`` so it shows at once; never used to resume.
    progress_detail = models.JSONField(default=dict, blank=True)
    checkpoint = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    # How many times a dead run was picked up again, and the progress each
    # resume started from: the proof that work was not redone.
    resume_count = models.PositiveIntegerField(default=0)
    resumed_from = models.JSONField(default=list, blank=True)
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    worker = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["job_name"], condition=Q(status="running"), name="batch_jobrun_one_running_per_job"
            ),
        ]
        indexes = [models.Index(fields=["job_name", "-started_at"]), models.Index(fields=["status", "finished_at"])]

    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def __str__(self) -> str:
        return f"{self.job_name} {self.status} ({self.id})"


class DailySessionRollup(models.Model):
    """Per-session activity of one UTC day."""

    id = models.BigAutoField(primary_key=True)
    day = models.DateField()
    session = models.ForeignKey("context.Session", on_delete=models.CASCADE, related_name="+")
    events = models.PositiveIntegerField(default=0)
    participants = models.PositiveIntegerField(default=0, help_text="Distinct authors of that day's events.")
    suggestions_shown = models.PositiveIntegerField(default=0)
    suggestions_accepted = models.PositiveIntegerField(default=0)
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["-day", "session_id"]
        constraints = [models.UniqueConstraint(fields=["day", "session"], name="batch_rollup_unique_day_session")]

    def __str__(self) -> str:
        return f"{self.day} {self.session_id}"


class DailyUserRollup(models.Model):
    """Per-user activity of one UTC day."""

    id = models.BigAutoField(primary_key=True)
    day = models.DateField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    events = models.PositiveIntegerField(default=0)
    sessions = models.PositiveIntegerField(default=0, help_text="Sessions the user wrote events in.")
    suggestions_shown = models.PositiveIntegerField(default=0, help_text="Suggestions in the user's sessions.")
    suggestions_accepted = models.PositiveIntegerField(default=0, help_text="Suggestions the user accepted.")
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["-day", "user_id"]
        constraints = [models.UniqueConstraint(fields=["day", "user"], name="batch_rollup_unique_day_user")]

    def __str__(self) -> str:
        return f"{self.day} user {self.user_id}"


class SessionActivity(models.Model):
    """Per-session counters kept by the ``activity`` subscriber (``apps.batch.subscribers``).

    The table keeps its first name, ``eventbus_sessionactivity``: the model
    moved here from the event bus by a state-only migration.
    """

    session_id = models.UUIDField(primary_key=True)
    # {"context.updated": 12, "user.action": 3, ...}
    events_by_type = models.JSONField(default=dict)
    events_total = models.BigIntegerField(default=0)
    participants_joined = models.IntegerField(default=0)
    participants_left = models.IntegerField(default=0)
    suggestions_generated = models.IntegerField(default=0)
    suggestions_accepted = models.IntegerField(default=0)
    suggestions_rejected = models.IntegerField(default=0)
    first_event_at = models.DateTimeField(null=True, blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "eventbus_sessionactivity"
        verbose_name_plural = "session activity"

    def __str__(self) -> str:
        return f"activity of {self.session_id}"

    @property
    def participants_active(self) -> int:
        return self.participants_joined - self.participants_left
