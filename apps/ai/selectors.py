"""Reads for inference requests, suggestions, model versions and embeddings."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Collection
from typing import Any

import numpy as np
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from apps.ai.models import Embedding, InferenceRequest, ModelVersion, Suggestion, SuggestionFeedback, SuggestionKind
from apps.common.exceptions import NotFound
from apps.context import selectors as context_selectors

NEXT_ACTION_MODEL = "next_action"

# The next-action vocabulary: what a name must look like before any model
# learns it or any suggestion offers it. An identifier of at most 64
# characters (letters, digits, ``_``, ``-``; a letter first) cannot carry a
# link, markup or a sentence, and bounds what a model stores per name. The
# same pattern is used as a PostgreSQL regular expression
# (``apps.batch.selectors.next_action_vocabulary``), so it stays in the
# syntax both engines read alike.
ACTION_NAME_MAX_CHARS = 64
ACTION_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
_ACTION_NAME_RE = re.compile(ACTION_NAME_PATTERN)


def action_name_valid(name: Any) -> bool:
    """Whether ``name`` may be a next-action name at all (see ``ACTION_NAME_PATTERN``)."""
    return isinstance(name, str) and len(name) <= ACTION_NAME_MAX_CHARS and _ACTION_NAME_RE.fullmatch(name) is not None


def _as_uuid(value: Any, *, what: str) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError) as exc:
        raise NotFound(f"{what} not found.") from exc


# --- requests and suggestions ----------------------------------------------


def _takes_part(*, session_id: Any, user: AbstractBaseUser) -> bool:
    """Whether ``user`` is an active participant of the session (context's cached check)."""
    return context_selectors.participant_get(session_id=session_id, user=user) is not None


def inference_request_get(*, request_id: Any) -> InferenceRequest | None:
    try:
        rid = _as_uuid(request_id, what="Inference request")
    except NotFound:
        return None
    return InferenceRequest.objects.filter(pk=rid).first()


def inference_request_get_for_user(*, request_id: Any, user: AbstractBaseUser) -> InferenceRequest:
    """The request, if ``user`` takes part in its session; 404 otherwise."""
    rid = _as_uuid(request_id, what="Inference request")
    request = InferenceRequest.objects.filter(pk=rid).first()
    if request is None or not _takes_part(session_id=request.session_id, user=user):
        raise NotFound("Inference request not found.")
    return request


# Suggestions stored before retrieval became same-session only may show
# another session's text; reads leave them out (tenant isolation).
# ``has_key`` first: a missing key would make the comparison NULL, and
# ``exclude`` would then drop every row without it.
_CROSS_SESSION = Q(kind=SuggestionKind.RELATED_CONTEXT, content__has_key="same_session") & Q(
    content__same_session=False
)


def suggestion_list_for_session(*, session: Any, kind: str | None = None) -> QuerySet[Suggestion]:
    qs = Suggestion.objects.filter(session=session).exclude(_CROSS_SESSION)
    if kind:
        qs = qs.filter(kind=kind)
    return qs.order_by("-created_at", "kind", "rank", "id")


def suggestion_get_for_user(*, suggestion_id: Any, user: AbstractBaseUser) -> Suggestion:
    sid = _as_uuid(suggestion_id, what="Suggestion")
    suggestion = Suggestion.objects.filter(pk=sid).exclude(_CROSS_SESSION).first()
    if suggestion is None or not _takes_part(session_id=suggestion.session_id, user=user):
        raise NotFound("Suggestion not found.")
    return suggestion


def suggestion_to_dict(suggestion: Suggestion) -> dict[str, Any]:
    return {
        "id": str(suggestion.id),
        "kind": suggestion.kind,
        "content": suggestion.content,
        "score": suggestion.score,
        "source_seqs": list(suggestion.source_seqs or []),
        "trigger_seq": suggestion.trigger_seq,
        "model_version": suggestion.model_version,
        "explanation": suggestion.explanation or {},
        "created_at": suggestion.created_at.isoformat(),
    }


def inference_request_to_dict(request: InferenceRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(request.id),
        "status": request.status,
        "kind": request.kind,
        "session_id": str(request.session_id),
        "trigger_seq": request.trigger_seq,
        "model_version": request.model_version,
        "queued_at": request.queued_at.isoformat() if request.queued_at else None,
        "started_at": request.started_at.isoformat() if request.started_at else None,
        "finished_at": request.finished_at.isoformat() if request.finished_at else None,
    }
    if request.kind == InferenceRequest.Kind.QUERY:
        body["query"] = request.query
    if request.status == InferenceRequest.Status.FAILED:
        body["error"] = request.error
    body["suggestions"] = (
        [
            suggestion_to_dict(s)
            for s in request.suggestions.exclude(_CROSS_SESSION).order_by("-created_at", "kind", "rank")
        ]
        if request.status == InferenceRequest.Status.DONE
        else []
    )
    return body


# --- inputs the workers read (context's, through its selectors) -------------


def event_text(event_type: str, data: Any) -> str:
    """The text the AI reads from an event: ``data.text``, else the action and its target."""
    return context_selectors.context_event_text(event_type, data)


def action_sequences(*, limit_sessions: int = 1000, per_session: int = 200) -> list[list[str]]:
    """``user_action`` name sequences of recent sessions (oldest first), for the frequency baseline.

    Only valid names are kept (``action_name_valid``); which of them may be
    offered to a session is decided at prediction time (the shared vocabulary
    plus the session's own names, ``workers.inference.predictors``).
    """
    sequences = context_selectors.user_action_sequences(limit_sessions=limit_sessions, per_session=per_session)
    kept = ([a for a in seq if action_name_valid(a)] for seq in sequences)
    return [seq for seq in kept if seq]


def next_action_feedback_examples(
    *, verdict: str, context: int, vocabulary: Collection[str] | None = None
) -> list[tuple[str, list[str], str]]:
    """``(session id, recent actions, suggested action)`` for every ``next_action`` suggestion given ``verdict``.

    ``accept``: examples of what to predict; ``reject``: negatives, what not
    to predict after those actions (training, ``workers/training/train.py``).
    The recent actions are the session's last ``context`` actions up to the
    suggestion's trigger seq, what the model saw when it made the suggestion.
    Invalid names and (with ``vocabulary``) names outside it are left out; an
    example whose action is left out, or with no recent action left, is dropped.
    """

    def allowed(name: Any) -> bool:
        return action_name_valid(name) and (vocabulary is None or name in vocabulary)

    rows = (
        SuggestionFeedback.objects.filter(verdict=verdict, suggestion__kind=SuggestionKind.NEXT_ACTION)
        .values_list("suggestion__session_id", "suggestion__trigger_seq", "suggestion__content")
        .order_by("created_at", "id")
    )
    examples: list[tuple[str, list[str], str]] = []
    for session_id, trigger_seq, content in rows.iterator(chunk_size=1000):
        action = content.get("action") if isinstance(content, dict) else None
        if not allowed(action):
            continue
        inputs = context_selectors.inference_inputs_get(
            session_id=session_id, upto_seq=trigger_seq, from_trigger=False, candidates_limit=0, actions_limit=context
        )
        prefix = [name for _, name in inputs.recent_actions if allowed(name)]
        if prefix:
            examples.append((str(session_id), prefix, str(action)))
    return examples


def session_last_seq(*, session_id: Any) -> int:
    return context_selectors.session_last_seq(session_id=session_id)


# --- model versions -----------------------------------------------------------


def model_version_promoted_ref(*, name: str = NEXT_ACTION_MODEL) -> tuple[uuid.UUID, str] | None:
    """``(id, label)`` of the promoted version, or None: the cheap per-request hot-reload check."""
    row = ModelVersion.objects.filter(name=name, promoted=True).values_list("id", "version").first()
    if row is None:
        return None
    return row[0], f"{name}@{row[1]}"


def model_version_promoted(*, name: str = NEXT_ACTION_MODEL) -> ModelVersion | None:
    return ModelVersion.objects.filter(name=name, promoted=True).first()


def model_version_artifact(*, model_version_id: Any) -> bytes:
    """The artifact's bytes: the stored blob, else the file at ``artifact_path``."""
    row = ModelVersion.objects.filter(pk=model_version_id).values("artifact", "artifact_path").first()
    if row is None:
        raise NotFound("Model version not found.")
    if row["artifact"]:
        return bytes(row["artifact"])
    if row["artifact_path"]:
        from pathlib import Path

        return Path(row["artifact_path"]).read_bytes()
    raise NotFound("Model version has no artifact.")


def model_version_list(*, name: str | None = None) -> QuerySet[ModelVersion]:
    qs = ModelVersion.objects.defer("artifact")
    if name:
        qs = qs.filter(name=name)
    return qs.order_by("name", "-version")


# --- embeddings -------------------------------------------------------------


def embedding_content_hash(*, text: str, model_name: str) -> str:
    return hashlib.sha256(f"{model_name}\x00{text}".encode("utf-8", "surrogatepass")).hexdigest()


def embedding_get_many(*, content_hashes: list[str]) -> dict[str, np.ndarray]:
    if not content_hashes:
        return {}
    rows = Embedding.objects.filter(content_hash__in=content_hashes).values_list("content_hash", "vector")
    return {h: np.frombuffer(bytes(v), dtype="<f4").copy() for h, v in rows}


def embedding_exists(*, content_hash: str) -> bool:
    return Embedding.objects.filter(content_hash=content_hash).exists()
