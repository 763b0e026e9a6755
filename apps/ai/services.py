"""Writes of the AI app: inference requests, feedback, model versions and embeddings.

Every function is keyword-only and transactional; domain events go through the
outbox in the same transaction as the change they describe. The life of an
inference request (trigger or query -> claim -> complete or fail) is in
``apps.ai.inference_requests`` and re-exported here: callers import
``apps.ai.services`` only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from apps.ai import selectors
from apps.ai.inference_requests import (
    CLAIM_LEASE,
    QUERY_MAX_CHARS,
    TASK_NAME,
    TASK_QUEUE,
    SuggestionDraft,
    inference_request_claim,
    inference_request_complete,
    inference_request_create_query,
    inference_request_fail,
    inference_request_trigger,
    outbox_event,
)
from apps.ai.models import Embedding, InferenceRequest, ModelVersion, Suggestion, SuggestionFeedback, SuggestionKind
from apps.ai.quotas import AiQuotaExceeded, ai_query_quota_take
from apps.common.exceptions import NotFound, ValidationFailed
from apps.common.logging import get_correlation_id

# --- feedback ---------------------------------------------------------------


def suggestion_feedback_submit(
    *, suggestion_id: Any, user: AbstractBaseUser, verdict: Any, comment: Any = ""
) -> SuggestionFeedback:
    if verdict not in SuggestionFeedback.Verdict.values:
        raise ValidationFailed(
            "Verdict must be 'accept' or 'reject'.",
            details={"verdict": [f"Must be one of {SuggestionFeedback.Verdict.values}."]},
        )
    if comment is None:
        comment = ""
    if not isinstance(comment, str) or len(comment) > 2000:
        raise ValidationFailed(
            "Comment must be a string of at most 2000 characters.", details={"comment": ["Invalid."]}
        )
    suggestion = selectors.suggestion_get_for_user(suggestion_id=suggestion_id, user=user)
    with transaction.atomic():
        feedback, _ = SuggestionFeedback.objects.update_or_create(
            suggestion=suggestion, user=user, defaults={"verdict": verdict, "comment": comment}
        )
        outbox_event(
            event_type="suggestion.feedback",
            session_id=suggestion.session_id,
            user_id=user.pk,
            correlation_id=get_correlation_id(),
            data={
                "suggestion_id": str(suggestion.id),
                "accepted": verdict == SuggestionFeedback.Verdict.ACCEPT,
                "kind": suggestion.kind,
            },
        )
    return feedback


# --- model versions -----------------------------------------------------------


def model_version_register(
    *,
    name: str = selectors.NEXT_ACTION_MODEL,
    artifact: bytes | None = None,
    artifact_path: str = "",
    metrics: dict[str, Any] | None = None,
    promote: bool = False,
    notes: str = "",
) -> ModelVersion:
    """Store a trained artifact as the next version of ``name`` (optionally promoting it)."""
    if not artifact and not artifact_path:
        raise ValidationFailed("A model version needs an artifact or an artifact path.")
    size = len(artifact) if artifact else 0
    if not size and artifact_path:
        from pathlib import Path

        path = Path(artifact_path)
        size = path.stat().st_size if path.is_file() else 0
    for _ in range(5):
        try:
            with transaction.atomic():
                latest = ModelVersion.objects.filter(name=name).aggregate(v=Max("version"))["v"] or 0
                version = ModelVersion.objects.create(
                    name=name,
                    version=latest + 1,
                    metrics=metrics or {},
                    artifact=artifact,
                    artifact_path=artifact_path,
                    artifact_bytes=size,
                    notes=notes,
                )
                if promote:
                    version = model_version_promote(model_version_id=version.pk)
            return version
        except IntegrityError:
            continue  # another registration took this number; take the next
    raise ValidationFailed("Could not allocate a model version number; try again.", code="conflict")


def model_version_promote(*, model_version_id: Any) -> ModelVersion:
    """Make this the one promoted version of its name; running workers pick it up on their next request."""
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().filter(pk=model_version_id).first()
        if version is None:
            raise NotFound("Model version not found.")
        ModelVersion.objects.filter(name=version.name, promoted=True).exclude(pk=version.pk).update(
            promoted=False, updated_at=timezone.now()
        )
        if not version.promoted:
            version.promoted = True
            version.promoted_at = timezone.now()
            version.save(update_fields=["promoted", "promoted_at", "updated_at"])
    return version


def model_version_demote(*, model_version_id: Any) -> None:
    ModelVersion.objects.filter(pk=model_version_id).update(promoted=False, updated_at=timezone.now())


def model_version_rollback(*, name: str = selectors.NEXT_ACTION_MODEL) -> ModelVersion | None:
    """Demote the promoted version and promote the one promoted before it.

    "Before it" is the latest earlier version that was ever promoted; with none,
    nothing stays promoted and workers fall back to the frequency baseline.
    Returns the version now promoted (or None).
    """
    with transaction.atomic():
        current = ModelVersion.objects.select_for_update().filter(name=name, promoted=True).first()
        if current is None:
            return None
        previous = (
            ModelVersion.objects.filter(name=name, promoted_at__isnull=False, version__lt=current.version)
            .order_by("-version")
            .first()
        )
        current.promoted = False
        current.notes = (current.notes + "\n" if current.notes else "") + f"rolled back at {timezone.now().isoformat()}"
        current.save(update_fields=["promoted", "notes", "updated_at"])
        if previous is None:
            return None
        return model_version_promote(model_version_id=previous.pk)


# --- embeddings -------------------------------------------------------------


def embedding_store_many(*, model_name: str, vectors: dict[str, np.ndarray]) -> int:
    """Persist vectors by content hash; an existing hash is left as it is. Returns rows offered."""
    if not vectors:
        return 0
    rows = [
        Embedding(
            content_hash=h,
            model_name=model_name[:100],
            dim=int(v.shape[-1]),
            vector=np.asarray(v, dtype="<f4").tobytes(),
        )
        for h, v in vectors.items()
    ]
    Embedding.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


# --- retention ----------------------------------------------------------------

# Rows deleted per statement: each chunk is one indexed id read and one
# DELETE, short enough not to hold locks against the realtime path.
PURGE_CHUNK = 5000


def _purge_in_chunks(queryset: Any) -> int:
    model = queryset.model
    deleted = 0
    while True:
        ids = list(queryset.order_by().values_list("pk", flat=True)[:PURGE_CHUNK])
        if not ids:
            return deleted
        count, _ = model.objects.filter(pk__in=ids).delete()
        deleted += len(ids)
        if len(ids) < PURGE_CHUNK or not count:
            return deleted


def suggestion_feedback_purge(*, older_than: datetime) -> int:
    """Delete feedback given before ``older_than`` (its suggestion then falls to the suggestion purge)."""
    return _purge_in_chunks(SuggestionFeedback.objects.filter(updated_at__lt=older_than))


def suggestion_purge(*, older_than: datetime) -> int:
    """Delete suggestions made before ``older_than`` that no longer carry feedback.

    Feedback is training data with its own, longer retention; a suggestion
    with feedback stays until the feedback is purged.
    """
    return _purge_in_chunks(Suggestion.objects.filter(created_at__lt=older_than, feedback__isnull=True))


def inference_request_purge(*, older_than: datetime) -> int:
    """Delete finished (done or failed) requests that ended before ``older_than`` and have no suggestion left.

    Pending and running requests are never touched, whatever their age.
    """
    return _purge_in_chunks(
        InferenceRequest.objects.filter(
            status__in=[InferenceRequest.Status.DONE, InferenceRequest.Status.FAILED],
            finished_at__lt=older_than,
            suggestions__isnull=True,
        )
    )


def model_version_purge(*, older_than: datetime) -> int:
    """Delete model versions registered before ``older_than`` that were never promoted.

    A training round registers one every day, artifact included; the promoted
    one and every version ever promoted (the rollback targets) are kept.
    """
    return _purge_in_chunks(
        ModelVersion.objects.filter(created_at__lt=older_than, promoted=False, promoted_at__isnull=True)
    )


def embedding_purge(*, older_than: datetime) -> int:
    """Delete embeddings stored before ``older_than``: a cache by content hash, recomputed when next needed."""
    return _purge_in_chunks(Embedding.objects.filter(created_at__lt=older_than))


__all__ = [
    "CLAIM_LEASE",
    "QUERY_MAX_CHARS",
    "TASK_NAME",
    "TASK_QUEUE",
    "AiQuotaExceeded",
    "SuggestionDraft",
    "SuggestionKind",
    "ai_query_quota_take",
    "embedding_purge",
    "embedding_store_many",
    "inference_request_claim",
    "inference_request_complete",
    "inference_request_create_query",
    "inference_request_fail",
    "inference_request_purge",
    "inference_request_trigger",
    "model_version_demote",
    "model_version_promote",
    "model_version_purge",
    "model_version_register",
    "model_version_rollback",
    "suggestion_feedback_purge",
    "suggestion_feedback_submit",
    "suggestion_purge",
]
