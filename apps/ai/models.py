"""Inference requests, suggestions, feedback, model versions and embeddings.

Writes go through ``apps.ai.services``; reads through ``apps.ai.selectors``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import MD5

from apps.common.models import BaseModel


class SuggestionKind(models.TextChoices):
    RELATED_CONTEXT = "related_context", "Related context"
    NEXT_ACTION = "next_action", "Next action"
    QUERY = "query", "Query answer"


class InferenceRequest(BaseModel):
    """One unit of AI work for a session.

    ``auto`` requests come from context updates (they yield ``related_context``
    and ``next_action`` suggestions) and are coalesced: a partial unique
    constraint allows one pending ``auto`` request per session, and new updates
    move its ``trigger_seq`` forward instead of adding another. ``query``
    requests come from an explicit question and are never coalesced.
    """

    class Kind(models.TextChoices):
        AUTO = "auto", "Context update"
        QUERY = "query", "Query"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    session = models.ForeignKey("context.Session", on_delete=models.CASCADE, related_name="inference_requests")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    trigger_seq = models.BigIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.AUTO)
    query = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    model_version = models.CharField(max_length=100, blank=True, default="")
    correlation_id = models.CharField(max_length=64, blank=True, default="")
    # The task id that claimed the request: a redelivery of that same task (its
    # worker was killed) may claim it again; any other delivery may not.
    claim_token = models.CharField(max_length=64, blank=True, default="")
    # How many context updates this request stands for (1 + coalesced ones).
    coalesced = models.PositiveIntegerField(default=1)
    attempts = models.PositiveIntegerField(default=0)
    queued_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["session"],
                condition=Q(status="pending", kind="auto"),
                name="ai_one_pending_auto_request_per_session",
            ),
            models.UniqueConstraint(
                F("session"),
                MD5("query"),
                condition=Q(status="pending", kind="query"),
                name="ai_one_pending_query_per_session_text",
            ),
        ]
        indexes = [models.Index(fields=["session", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} request {self.id} ({self.status})"


class Suggestion(BaseModel):
    request = models.ForeignKey(InferenceRequest, on_delete=models.CASCADE, related_name="suggestions")
    session = models.ForeignKey("context.Session", on_delete=models.CASCADE, related_name="suggestions")
    kind = models.CharField(max_length=32, choices=SuggestionKind.choices)
    rank = models.PositiveSmallIntegerField(default=0)
    content = models.JSONField(default=dict)
    score = models.FloatField(default=0.0)
    source_seqs = models.JSONField(default=list, blank=True)
    trigger_seq = models.BigIntegerField(default=0)
    model_version = models.CharField(max_length=100, blank=True, default="")
    # Why it was suggested: the ranking's scores and matched terms (related
    # context, query) or the model and probability (next action). Shown in the
    # REST API and on the frame.
    explanation = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "kind", "rank"]
        constraints = [
            # The backstop behind the claim: one suggestion per (request, kind, rank).
            models.UniqueConstraint(fields=["request", "kind", "rank"], name="ai_suggestion_unique_request_kind_rank"),
        ]
        indexes = [models.Index(fields=["session", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} #{self.rank} for {self.session_id}"


class SuggestionFeedback(BaseModel):
    class Verdict(models.TextChoices):
        ACCEPT = "accept", "Accept"
        REJECT = "reject", "Reject"

    suggestion = models.ForeignKey(Suggestion, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="suggestion_feedback")
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    comment = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # A user's latest verdict replaces the earlier one.
            models.UniqueConstraint(fields=["suggestion", "user"], name="ai_feedback_unique_suggestion_user"),
        ]

    def __str__(self) -> str:
        return f"{self.verdict} on {self.suggestion_id} by {self.user_id}"


class ModelVersion(BaseModel):
    """A trained model artifact with its evaluation metrics.

    At most one version per ``name`` is promoted (partial unique constraint);
    realtime workers compare the promoted id on every request and reload when it
    changes (hot reload, see ``workers.inference.predictors``).
    """

    name = models.CharField(max_length=64, default="next_action")
    version = models.PositiveIntegerField()
    metrics = models.JSONField(default=dict, blank=True)
    artifact = models.BinaryField(null=True, blank=True, editable=False)
    artifact_path = models.CharField(max_length=500, blank=True, default="")
    artifact_bytes = models.PositiveIntegerField(default=0)
    promoted = models.BooleanField(default=False)
    promoted_at = models.DateTimeField(null=True, blank=True)
    notes = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="ai_model_version_unique_name_version"),
            models.UniqueConstraint(
                fields=["name"], condition=Q(promoted=True), name="ai_model_version_one_promoted_per_name"
            ),
        ]

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def __str__(self) -> str:
        return self.label + (" (promoted)" if self.promoted else "")


class Embedding(models.Model):
    """A sentence embedding, stored once per (model, text) by content hash.

    ``content_hash`` is sha256 over the model name and the text, so the same
    text under two models gets two rows. ``vector`` is little-endian float32.
    """

    id = models.BigAutoField(primary_key=True)
    content_hash = models.CharField(max_length=64, unique=True)
    model_name = models.CharField(max_length=100)
    dim = models.PositiveSmallIntegerField()
    vector = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.model_name}:{self.content_hash[:12]}"
