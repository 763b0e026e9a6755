"""Writes for inference requests, suggestions, feedback, model versions and embeddings.

Every function is keyword-only and transactional; broadcasts and presence
changes run after commit, domain events and task messages go through the
outbox in the same transaction as the change they describe.

Life of a request: ``inference_request_trigger`` (context update, coalesced)
or ``inference_request_create_query`` (explicit question) -> the task
``ai.generate_suggestions`` -> ``inference_request_claim`` (pending ->
running, conditional) -> ``inference_request_complete`` (running -> done,
conditional, with the suggestions) or ``inference_request_fail``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
from asgiref.sync import async_to_sync
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from apps.ai import selectors
from apps.ai.models import Embedding, InferenceRequest, ModelVersion, Suggestion, SuggestionFeedback, SuggestionKind
from apps.common.exceptions import NotFound, ValidationFailed
from apps.common.logging import get_correlation_id
from apps.context import selectors as context_selectors
from apps.context.models import Session
from apps.eventbus.services import outbox_event_add, outbox_task_add
from apps.realtime.broadcast import presence_set_ai_state, session_broadcast, session_broadcast_async

logger = logging.getLogger(__name__)

TASK_NAME = "ai.generate_suggestions"
TASK_QUEUE = "ai.realtime"
QUERY_MAX_CHARS = 2000
# A running request whose worker vanished without a redelivery (e.g. the
# message was dead-lettered) may be claimed again by a new delivery after this.
CLAIM_LEASE = timedelta(minutes=5)


@dataclass(frozen=True)
class SuggestionDraft:
    kind: str
    content: dict[str, Any]
    score: float
    source_seqs: list[int] = field(default_factory=list)


# --- collaborators, reached through their announced interfaces ---------------


def _broadcast(*, session_id: Any, message: dict[str, Any]) -> None:
    try:
        session_broadcast(session_id=session_id, message=message)
    except Exception:  # the live push is best effort; clients resync from REST
        logger.warning("suggestion broadcast failed", exc_info=True, extra={"session_id": str(session_id)})


def _broadcast_many(*, session_id: Any, messages: list[dict[str, Any]]) -> None:
    """Several frames through one event loop and one channel-layer connection.

    ``session_broadcast`` is sync and starts a fresh loop per call (and with it
    a fresh Redis connection); for a request's 3-6 suggestion frames that cost
    3-25 ms each on a loaded box, on the path to the client.
    """
    if not messages:
        return

    async def send_all() -> None:
        for message in messages:
            await session_broadcast_async(session_id=session_id, message=message)

    try:
        async_to_sync(send_all)()
    except Exception:  # the live push is best effort; clients read the REST list
        logger.warning("suggestion broadcast failed", exc_info=True, extra={"session_id": str(session_id)})


# Presence changes run on one background thread: they are advisory, cost a
# Redis write plus a channel-layer send (tens of ms on a loaded box), and must
# not sit on the path from claim to suggestion. One thread keeps them in order
# (queued -> generating -> None).
_presence_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ai-presence")


def _presence_ai_state_now(*, session_id: Any, state: str | None) -> None:
    try:
        presence_set_ai_state(session_id=session_id, state=state)
    except Exception:  # presence is advisory
        logger.warning("presence_set_ai_state failed", exc_info=True, extra={"session_id": str(session_id)})


def _presence_ai_state(*, session_id: Any, state: str | None) -> None:
    _presence_executor.submit(_presence_ai_state_now, session_id=session_id, state=state)


def _outbox_event(
    *, event_type: str, session_id: Any, user_id: int | None, data: dict[str, Any], correlation_id: str | None
) -> None:
    outbox_event_add(
        event_type=event_type, session_id=session_id, user_id=user_id, data=data, correlation_id=correlation_id or None
    )


def _enqueue(request: InferenceRequest) -> None:
    """Send the task if and only if the request commits (outbox row in this transaction)."""
    kwargs = {"request_id": str(request.id)}
    outbox_task_add(task_name=TASK_NAME, kwargs=kwargs, queue=TASK_QUEUE, correlation_id=request.correlation_id or None)


# --- requests ---------------------------------------------------------------


def _session_or_none(session_id: Any) -> Session | None:
    try:
        sid = session_id if isinstance(session_id, uuid.UUID) else uuid.UUID(str(session_id))
    except (TypeError, ValueError, AttributeError):
        return None
    return Session.objects.filter(pk=sid).first()


def inference_request_trigger(
    *,
    session_id: Any,
    trigger_seq: int,
    user_id: int | None = None,
    correlation_id: str | None = None,
    **_unknown: Any,
) -> InferenceRequest | None:
    """A context update happened: create the session's pending request, or move it forward.

    Returns the new request, or None when the update was coalesced into a
    pending one (or the session is gone, closed, or its author turned AI off).
    The task message is written to the outbox only when a request is created.
    """
    trigger_seq = int(trigger_seq)
    session = _session_or_none(session_id)
    if session is None or session.state != Session.State.OPEN:
        return None
    if user_id is not None:
        from django.contrib.auth import get_user_model

        author = get_user_model().objects.filter(pk=user_id).first()
        if author is not None and not context_selectors.preferences_get(user=author).ai_enabled:
            return None
    correlation_id = correlation_id or get_correlation_id() or ""
    pending = InferenceRequest.objects.filter(
        session_id=session.pk, kind=InferenceRequest.Kind.AUTO, status=InferenceRequest.Status.PENDING
    )
    now = timezone.now()
    with transaction.atomic():
        # The conditional update is the coalescing: it succeeds only while the
        # request is still pending (a claimed one is no longer matched).
        if pending.update(
            trigger_seq=Greatest(F("trigger_seq"), trigger_seq), coalesced=F("coalesced") + 1, updated_at=now
        ):
            return None
        try:
            with transaction.atomic():
                request = InferenceRequest.objects.create(
                    session_id=session.pk,
                    requested_by_id=user_id,
                    trigger_seq=trigger_seq,
                    kind=InferenceRequest.Kind.AUTO,
                    correlation_id=correlation_id[:64],
                    queued_at=now,
                )
        except IntegrityError:
            # A concurrent trigger created the pending request first (the
            # partial unique constraint made us wait for it): coalesce into it.
            pending.update(
                trigger_seq=Greatest(F("trigger_seq"), trigger_seq), coalesced=F("coalesced") + 1, updated_at=now
            )
            return None
        _enqueue(request)
        transaction.on_commit(lambda: _presence_ai_state(session_id=session.pk, state="queued"))
    return request


def inference_request_create_query(*, session_id: Any, user: AbstractBaseUser, query: Any) -> InferenceRequest:
    """An explicit question: a ``query`` request over the session (never coalesced)."""
    if not isinstance(query, str) or not query.strip():
        raise ValidationFailed("A non-empty query is required.", details={"query": ["This field is required."]})
    if len(query) > QUERY_MAX_CHARS:
        raise ValidationFailed(
            "The query is too long.",
            code="query_too_long",
            details={"query": [f"At most {QUERY_MAX_CHARS} characters."], "max_chars": QUERY_MAX_CHARS},
        )
    if "\x00" in query:
        raise ValidationFailed("The query contains a NUL character.", details={"query": ["Invalid character."]})
    session = context_selectors.session_get_for_user(session_id=session_id, user=user)
    now = timezone.now()
    with transaction.atomic():
        request = InferenceRequest.objects.create(
            session=session,
            requested_by=user,
            trigger_seq=context_selectors.session_last_seq(session_id=session.pk),
            kind=InferenceRequest.Kind.QUERY,
            query=query.strip(),
            correlation_id=(get_correlation_id() or "")[:64],
            queued_at=now,
        )
        _enqueue(request)
        transaction.on_commit(lambda: _presence_ai_state(session_id=session.pk, state="queued"))
    return request


def inference_request_claim(*, request_id: Any, claim_token: str = "") -> InferenceRequest | None:
    """pending -> running, as one conditional update; None if another delivery owns it.

    A redelivery of the task that claimed it (same ``claim_token``: its worker
    died mid-task, or an operator replays its dead letter) may take it again,
    as may any delivery once ``CLAIM_LEASE`` has passed since the claim.
    """
    try:
        rid = request_id if isinstance(request_id, uuid.UUID) else uuid.UUID(str(request_id))
    except (TypeError, ValueError, AttributeError):
        return None
    now = timezone.now()
    claimable = Q(status=InferenceRequest.Status.PENDING) | Q(
        status=InferenceRequest.Status.RUNNING, started_at__lt=now - CLAIM_LEASE
    )
    if claim_token:
        # Its own crash redelivery, or an operator's replay of its dead letter.
        claimable |= Q(
            status__in=[InferenceRequest.Status.RUNNING, InferenceRequest.Status.FAILED], claim_token=claim_token
        )
    claimed = InferenceRequest.objects.filter(claimable, pk=rid).update(
        status=InferenceRequest.Status.RUNNING,
        started_at=now,
        claim_token=claim_token[:64],
        attempts=F("attempts") + 1,
        updated_at=now,
    )
    if not claimed:
        return None
    request = InferenceRequest.objects.select_related("requested_by").get(pk=rid)
    _presence_ai_state(session_id=request.session_id, state="generating")
    return request


def _after_request_presence(session_id: Any) -> None:
    still_pending = InferenceRequest.objects.filter(
        session_id=session_id, status=InferenceRequest.Status.PENDING
    ).exists()
    _presence_ai_state(session_id=session_id, state="queued" if still_pending else None)


def inference_request_complete(
    *,
    request_id: Any,
    claim_token: str = "",
    drafts: Sequence[SuggestionDraft],
    model_version: str,
    input_size: int,
    processing_type: str = "realtime",
    duration_ms: float | None = None,
    model_versions_by_kind: dict[str, str] | None = None,
    timings: dict[str, float] | None = None,
) -> list[Suggestion] | None:
    """running -> done with its suggestions, in one transaction; None if this delivery lost the claim.

    ``model_version`` names every model the request used; a suggestion gets the
    one that made it from ``model_versions_by_kind`` when given.
    """
    model_versions_by_kind = model_versions_by_kind or {}
    with transaction.atomic():
        request = (
            InferenceRequest.objects.select_for_update()
            .filter(pk=request_id, status=InferenceRequest.Status.RUNNING, claim_token=claim_token[:64])
            .first()
        )
        if request is None:
            return None
        ranks: dict[str, int] = {}
        rows = []
        for draft in drafts:
            rank = ranks.get(draft.kind, 0)
            ranks[draft.kind] = rank + 1
            rows.append(
                Suggestion(
                    request=request,
                    session_id=request.session_id,
                    kind=draft.kind,
                    rank=rank,
                    content=draft.content,
                    score=float(draft.score),
                    source_seqs=[int(s) for s in draft.source_seqs],
                    trigger_seq=request.trigger_seq,
                    model_version=(model_versions_by_kind.get(draft.kind) or model_version)[:100],
                )
            )
        suggestions = Suggestion.objects.bulk_create(rows)
        now = timezone.now()
        # One timestamp per request (auto_now_add stamps each row apart), so
        # "newest first" lists keep a request's suggestions in kind/rank order.
        Suggestion.objects.filter(request=request).update(created_at=now, updated_at=now)
        for suggestion in suggestions:
            suggestion.created_at = suggestion.updated_at = now
        request.status = InferenceRequest.Status.DONE
        request.finished_at = now
        request.model_version = model_version[:100]
        request.error = ""
        request.save(update_fields=["status", "finished_at", "model_version", "error", "updated_at"])
        user_id = request.requested_by_id
        if suggestions:
            _outbox_event(
                event_type="suggestion.generated",
                session_id=request.session_id,
                user_id=user_id,
                correlation_id=request.correlation_id,
                data={
                    "suggestion_ids": [str(s.id) for s in suggestions],
                    "inference_request_id": str(request.id),
                    "trigger_seq": request.trigger_seq,
                    "model_version": model_version,
                    "kinds": sorted({s.kind for s in suggestions}),
                },
            )
        _outbox_event(
            event_type="ai.processing",
            session_id=request.session_id,
            user_id=user_id,
            correlation_id=request.correlation_id,
            data={
                "inference_request_id": str(request.id),
                "status": InferenceRequest.Status.DONE,
                "trigger_seq": request.trigger_seq,
                "model_version": model_version,
                "processing_type": processing_type,
                "input_size": int(input_size),
                "suggestions": len(suggestions),
                "duration_ms": duration_ms,
                "request_kind": request.kind,
                # Where the worker's time went (claim, candidates, embed, rank, next action).
                "timings": timings or {},
            },
        )
        session_id = request.session_id
        frames = [
            {"type": "suggestion", "request_id": str(request.id), **selectors.suggestion_to_dict(s)}
            for s in suggestions
        ]

        def push() -> None:
            _broadcast_many(session_id=session_id, messages=frames)
            _after_request_presence(session_id)

        transaction.on_commit(push)
    return suggestions


def inference_request_fail(
    *, request_id: Any, error: str, claim_token: str | None = None, processing_type: str = "realtime"
) -> bool:
    """Mark a request failed (its task gave up); True if this call changed it."""
    with transaction.atomic():
        qs = InferenceRequest.objects.select_for_update().filter(
            pk=request_id, status__in=[InferenceRequest.Status.PENDING, InferenceRequest.Status.RUNNING]
        )
        if claim_token is not None:
            qs = qs.filter(Q(claim_token=claim_token[:64]) | Q(status=InferenceRequest.Status.PENDING))
        request = qs.first()
        if request is None:
            return False
        request.status = InferenceRequest.Status.FAILED
        request.finished_at = timezone.now()
        request.error = error[:4000]
        request.save(update_fields=["status", "finished_at", "error", "updated_at"])
        _outbox_event(
            event_type="ai.processing",
            session_id=request.session_id,
            user_id=request.requested_by_id,
            correlation_id=request.correlation_id,
            data={
                "inference_request_id": str(request.id),
                "status": InferenceRequest.Status.FAILED,
                "trigger_seq": request.trigger_seq,
                "model_version": request.model_version,
                "processing_type": processing_type,
                "input_size": 0,
                "error": request.error[:500],
            },
        )
        session_id = request.session_id
        transaction.on_commit(lambda: _after_request_presence(session_id))
    return True


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
        _outbox_event(
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


__all__ = [
    "SuggestionDraft",
    "SuggestionKind",
    "embedding_store_many",
    "inference_request_claim",
    "inference_request_complete",
    "inference_request_create_query",
    "inference_request_fail",
    "inference_request_trigger",
    "model_version_demote",
    "model_version_promote",
    "model_version_register",
    "model_version_rollback",
    "suggestion_feedback_submit",
]
