"""Writes for the life of an inference request.

Every function is keyword-only and transactional; broadcasts and presence
changes run after commit (``apps.ai.push``), domain events and task messages
go through the outbox in the same transaction as the change they describe.

Life of a request: ``inference_request_trigger`` (context update, coalesced)
or ``inference_request_create_query`` (explicit question) -> the task
``ai.generate_suggestions`` -> ``inference_request_claim`` (pending ->
running, conditional) -> ``inference_request_complete`` (running -> done,
conditional, with the suggestions) or ``inference_request_fail``.
``apps.ai.services`` re-exports all of it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from apps.ai import push, selectors
from apps.ai.models import InferenceRequest, Suggestion
from apps.ai.quotas import ai_auto_quota_allows, ai_query_quota_take
from apps.common.exceptions import ValidationFailed
from apps.common.logging import get_correlation_id
from apps.context import selectors as context_selectors
from apps.eventbus.services import outbox_event_add, outbox_task_add

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
    explanation: dict[str, Any] = field(default_factory=dict)


def outbox_event(
    *, event_type: str, session_id: Any, user_id: int | None, data: dict[str, Any], correlation_id: str | None
) -> None:
    """A domain event of this app, written to the outbox in the caller's transaction."""
    outbox_event_add(
        event_type=event_type, session_id=session_id, user_id=user_id, data=data, correlation_id=correlation_id or None
    )


def _enqueue(request: InferenceRequest) -> None:
    """Send the task if and only if the request commits (outbox row in this transaction)."""
    kwargs = {"request_id": str(request.id)}
    outbox_task_add(task_name=TASK_NAME, kwargs=kwargs, queue=TASK_QUEUE, correlation_id=request.correlation_id or None)


# --- requests ---------------------------------------------------------------


def _session_uuid(session_id: Any) -> uuid.UUID | None:
    try:
        return session_id if isinstance(session_id, uuid.UUID) else uuid.UUID(str(session_id))
    except (TypeError, ValueError, AttributeError):
        return None


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
    pending one (or the session is gone, closed, or its author turned AI off,
    or the author is over their quota of new automatic requests: REST and
    WebSocket appends alike ask through here, ``ai_auto_quota_allows``).
    The task message is written to the outbox only when a request is created.
    """
    trigger_seq = int(trigger_seq)
    sid = _session_uuid(session_id)
    if sid is None or not context_selectors.session_is_open(session_id=sid):
        return None
    if user_id is not None:
        from django.contrib.auth import get_user_model

        author = get_user_model().objects.filter(pk=user_id).first()
        if author is not None and not context_selectors.preferences_get(user=author).ai_enabled:
            return None
    correlation_id = correlation_id or get_correlation_id() or ""
    pending = InferenceRequest.objects.filter(
        session_id=sid, kind=InferenceRequest.Kind.AUTO, status=InferenceRequest.Status.PENDING
    )
    now = timezone.now()
    with transaction.atomic():
        # The conditional update is the coalescing: it succeeds only while the
        # request is still pending (a claimed one is no longer matched).
        if pending.update(
            trigger_seq=Greatest(F("trigger_seq"), trigger_seq), coalesced=F("coalesced") + 1, updated_at=now
        ):
            return None
        if user_id is not None and not ai_auto_quota_allows(user_id=user_id):
            # Dropped, not queued: a later update (after the window) reads the
            # whole recent context anyway.
            logger.info("automatic AI request over quota", extra={"session_id": str(sid), "user_id": user_id})
            return None
        try:
            with transaction.atomic():
                request = InferenceRequest.objects.create(
                    session_id=sid,
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
        transaction.on_commit(lambda: push.presence_ai_state(session_id=sid, state="queued"))
    return request


def inference_request_create_query(*, session_id: Any, user: AbstractBaseUser, query: Any) -> InferenceRequest:
    """An explicit question: a ``query`` request over the session.

    The same question (same session, same text) while one is still pending is
    answered by that one: it is returned, and no second task is sent. A new
    question counts against the asker's and the session's quota
    (``ai_query_quota_take``; ``AiQuotaExceeded``, 429, when over).
    """
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
    text = query.strip()
    pending = InferenceRequest.objects.filter(
        session=session, kind=InferenceRequest.Kind.QUERY, status=InferenceRequest.Status.PENDING, query=text
    )
    existing = pending.first()
    if existing is not None:
        return existing
    ai_query_quota_take(user_id=user.pk, session_id=session.pk)
    now = timezone.now()
    try:
        with transaction.atomic():
            request = InferenceRequest.objects.create(
                session=session,
                requested_by=user,
                trigger_seq=context_selectors.session_last_seq(session_id=session.pk),
                kind=InferenceRequest.Kind.QUERY,
                query=text,
                correlation_id=(get_correlation_id() or "")[:64],
                queued_at=now,
            )
            _enqueue(request)
            transaction.on_commit(lambda: push.presence_ai_state(session_id=session.pk, state="queued"))
    except IntegrityError:
        # The same question was created concurrently (the partial unique
        # constraint made us wait for it): answer with that one.
        existing = pending.first()
        if existing is None:
            raise
        return existing
    return request


def inference_request_claim(*, request_id: Any, claim_token: str = "", replay: bool = False) -> InferenceRequest | None:
    """pending -> running, as one conditional update; None if another delivery owns it.

    A redelivery of the task that claimed it (same ``claim_token``: its worker
    died mid-task) may take it again, as may any delivery once ``CLAIM_LEASE``
    has passed since the claim. An operator's replay of its dead letter
    (``replay``: the message carries a replay id, and a task id of its own) may
    take a failed request: running it again is what the operator asked for.
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
        # Its own crash redelivery.
        claimable |= Q(
            status__in=[InferenceRequest.Status.RUNNING, InferenceRequest.Status.FAILED], claim_token=claim_token
        )
    if replay:
        claimable |= Q(status=InferenceRequest.Status.FAILED)
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
    push.presence_ai_state(session_id=request.session_id, state="generating")
    return request


def _after_request_presence(session_id: Any) -> None:
    still_pending = InferenceRequest.objects.filter(
        session_id=session_id, status=InferenceRequest.Status.PENDING
    ).exists()
    push.presence_ai_state(session_id=session_id, state="queued" if still_pending else None)


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
    retrieval_method: str = "",
    suggestion_kinds: list[str] | None = None,
) -> list[Suggestion] | None:
    """running -> done with its suggestions, in one transaction; None if this delivery lost the claim.

    ``model_version`` names every model the request used; a suggestion gets the
    one that made it from ``model_versions_by_kind`` when given.
    ``processing_type`` (``realtime``, ``retry``, ``replay``: how the run came
    about), ``retrieval_method`` and ``suggestion_kinds`` (the author's
    preference, None for all) go on ``ai.processing``.
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
                    explanation=draft.explanation,
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
            outbox_event(
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
        outbox_event(
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
                "retrieval_method": retrieval_method,
                "suggestion_kinds": suggestion_kinds,
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

        def push_frames() -> None:
            push.broadcast_many(session_id=session_id, messages=frames)
            _after_request_presence(session_id)

        transaction.on_commit(push_frames)
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
        outbox_event(
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
