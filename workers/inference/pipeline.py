"""What ``ai.generate_suggestions`` does with one request, between claim and complete.

- ``auto`` requests (context updates): ``related_context`` from the text of the
  trigger event against the session's earlier events, plus ``next_action``
  from the session's recent ``user_action``s.
- ``query`` requests: ``query`` suggestions, the session's events closest to
  the question.

Ranking is ``workers.inference.retrieval.rank_related`` (a pure function,
measured by ``bench/quality.py`` on labelled conversations); candidate texts
are usually already embedded (content-hash cache), so a request normally
sends one new text through the batcher.

Everything the pipeline reads from the session (trigger text, candidates,
recent actions) comes from one context selector, ``inference_inputs_get``,
and only from the request's own session: suggestions are shown to every
participant of that session, so they may hold only what all of them may read
(tenant isolation, docs/architecture.md). A coalesced request stands for
several participants' updates, and its ``requested_by`` is just the first of
them, so nothing here depends on who asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings

from apps.ai import selectors as ai_selectors
from apps.ai import services as ai_services
from apps.ai.models import InferenceRequest, SuggestionKind
from apps.context import selectors as context_selectors
from workers.inference import retrieval
from workers.inference.embeddings import embed_texts
from workers.inference.predictors import allowed_actions, current_predictor
from workers.inference.runtime import runtime

logger = logging.getLogger(__name__)

RELATED_TOP_K = 3
NEXT_ACTION_TOP_K = 3
SNIPPET_CHARS = 280
# The predictor is asked for this many names, so that after dropping those the
# session may not be offered (``allowed_actions``) NEXT_ACTION_TOP_K remain.
NEXT_ACTION_CANDIDATES = 24
# How many of the latest actions are named as the source of a next-action guess.
ACTION_SOURCE_SEQS = 3
# How much of the session a request reads.
CANDIDATES_LIMIT = 200
RECENT_ACTIONS_LIMIT = 20


@dataclass
class Outcome:
    status: str
    request_id: str
    suggestions: int = 0
    model_version: str = ""
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _rank(
    query_text: str,
    query_vector: np.ndarray,
    candidates: Sequence[dict[str, Any]],
    vectors: list[np.ndarray],
    *,
    k: int,
    kind: str,
    query_author_id: int | None,
    timings: dict[str, float],
) -> list[ai_services.SuggestionDraft]:
    """The ranking itself is ``workers.inference.retrieval.rank_related`` (pure, benchmarked on labelled data).

    Candidates carry their event's ``author_id`` (``inference_inputs_get``),
    so the ranking's ``same_author`` feature compares it with ``query_author_id``.
    """
    ranked = retrieval.rank_related(
        query_text=query_text,
        query_vector=query_vector,
        candidates=candidates,
        vectors=vectors,
        k=k,
        method=settings.AI_RETRIEVAL_METHOD,
        query_author_id=query_author_id,
        timings=timings,
    )
    drafts: list[ai_services.SuggestionDraft] = []
    for chosen in ranked:
        candidate = candidates[chosen.index]
        drafts.append(
            ai_services.SuggestionDraft(
                kind=kind,
                content={
                    "text": candidate["text"][:SNIPPET_CHARS],
                    "session_id": candidate["session_id"],
                    "seq": candidate["seq"],
                    "same_session": candidate["same_session"],
                    "event_type": candidate["event_type"],
                },
                score=round(chosen.score, 4),
                source_seqs=[candidate["seq"]],
                explanation=chosen.explanation,
            )
        )
    return drafts


def _related(
    candidates: Sequence[dict[str, Any]],
    *,
    query_text: str,
    kind: str,
    timings: dict[str, float],
    query_author_id: int | None = None,
) -> tuple[list[ai_services.SuggestionDraft], int]:
    t1 = time.perf_counter()
    vectors = embed_texts([query_text, *[c["text"] for c in candidates]])
    t2 = time.perf_counter()
    drafts = _rank(
        query_text,
        vectors[0],
        candidates,
        vectors[1:],
        k=RELATED_TOP_K,
        kind=kind,
        query_author_id=query_author_id,
        timings=timings,
    )
    timings["embed_ms"] = round((t2 - t1) * 1000, 2)
    timings["rank_ms"] = round((time.perf_counter() - t2) * 1000, 2)
    return drafts, 1 + len(candidates)


def _next_actions(actions: Sequence[tuple[int, str]]) -> tuple[list[ai_services.SuggestionDraft], str, int]:
    if not actions:
        return [], "", 0
    predictor, label = current_predictor()
    names = [name for _, name in actions]
    # Tenant isolation: only the shared vocabulary and this session's own names.
    allowed = allowed_actions(session_actions=names)
    ranked = [(a, p) for a, p in predictor.predict(names, NEXT_ACTION_CANDIDATES) if a in allowed][:NEXT_ACTION_TOP_K]
    sources = [seq for seq, _ in actions[-ACTION_SOURCE_SEQS:]]
    drafts = [
        ai_services.SuggestionDraft(
            kind=SuggestionKind.NEXT_ACTION,
            # "after" is the session's own latest action, cut to a name's length.
            content={"action": action, "after": names[-1][: ai_selectors.ACTION_NAME_MAX_CHARS]},
            score=round(float(probability), 4),
            source_seqs=sources,
            explanation={
                "method": "next_action",
                "model": label,
                "probability": round(float(probability), 4),
                "rank": rank,
                # The recent actions the model read (names only, cut as "after" is).
                "after_actions": [n[: ai_selectors.ACTION_NAME_MAX_CHARS] for n in names[-ACTION_SOURCE_SEQS:]],
            },
        )
        for rank, (action, probability) in enumerate(ranked)
    ]
    return drafts, label, len(actions)


def _inputs(request: InferenceRequest) -> context_selectors.InferenceInputs:
    """The request's own session, nothing else; a query reads no trigger or actions."""
    is_query = request.kind == InferenceRequest.Kind.QUERY
    return context_selectors.inference_inputs_get(
        session_id=request.session_id,
        upto_seq=request.trigger_seq,
        from_trigger=not is_query,
        candidates_limit=CANDIDATES_LIMIT,
        actions_limit=0 if is_query else RECENT_ACTIONS_LIMIT,
    )


def wanted_kinds(request: InferenceRequest) -> frozenset[str] | None:
    """The kinds an ``auto`` request may make: its author's ``suggestion_kinds`` preference.

    An empty preference (the default) means every kind: None. Unknown names
    in it are ignored. A ``query`` request is an explicit question and is
    always answered. A coalesced request stands for several updates and its
    ``requested_by`` is the first author's: theirs is the preference read.
    """
    if request.kind == InferenceRequest.Kind.QUERY or request.requested_by is None:
        return None
    kinds = context_selectors.preferences_get(user=request.requested_by).suggestion_kinds
    if not isinstance(kinds, list) or not kinds:
        return None
    return frozenset(k for k in kinds if k in SuggestionKind.values)


def processing_path(*, replay: bool, attempts: int) -> str:
    """What ``ai.processing`` reports as ``processing_type``: how this run came about.

    ``replay``: an operator replayed the request's dead letter; ``retry``: a
    later attempt (a Celery retry or a crash redelivery: the request was
    claimed before); ``realtime``: the first run off ``ai.realtime``.
    """
    if replay:
        return "replay"
    return "retry" if attempts > 1 else "realtime"


def generate_for_request(*, request_id: str, claim_token: str, replay: bool = False) -> Outcome:
    """Claim, compute, complete. Raises on failure (the task decides retry or dead letter)."""
    started = time.perf_counter()
    request = ai_services.inference_request_claim(request_id=request_id, claim_token=claim_token, replay=replay)
    if request is None:
        return Outcome(status="skipped", request_id=str(request_id))
    timings: dict[str, float] = {"claim_ms": round((time.perf_counter() - started) * 1000, 2)}
    rt = runtime()
    t0 = time.perf_counter()
    inputs = _inputs(request)
    # The context read: candidates, and for an auto request the trigger and the recent actions.
    timings["candidates_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    drafts: list[ai_services.SuggestionDraft] = []
    versions: list[str] = []
    input_size = 0
    wanted = wanted_kinds(request)
    if request.kind == InferenceRequest.Kind.QUERY:
        # A question has no event, so no author to compare (and who asked must not matter).
        found, size = _related(inputs.candidates, query_text=request.query, kind=SuggestionKind.QUERY, timings=timings)
        drafts += found
        input_size += size
        versions.append(rt.model_name)
    else:
        # Kinds the author turned off are not computed at all.
        if inputs.trigger_text and (wanted is None or SuggestionKind.RELATED_CONTEXT in wanted):
            found, size = _related(
                inputs.candidates,
                query_text=inputs.trigger_text,
                kind=SuggestionKind.RELATED_CONTEXT,
                timings=timings,
                # The trigger event's own author (not requested_by, which a coalesced request shares).
                query_author_id=inputs.trigger_author_id,
            )
            drafts += found
            input_size += size
            versions.append(rt.model_name)
        t0 = time.perf_counter()
        wants_actions = wanted is None or SuggestionKind.NEXT_ACTION in wanted
        actions, label, size = _next_actions(inputs.recent_actions if wants_actions else ())
        timings["next_action_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        if size:
            drafts += actions
            input_size += size
            versions.append(label)
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    version = "+".join(versions)
    # Each suggestion names the model that made it; the request names them all.
    by_kind = {SuggestionKind.RELATED_CONTEXT: rt.model_name, SuggestionKind.QUERY: rt.model_name}
    stored = ai_services.inference_request_complete(
        request_id=request.pk,
        claim_token=claim_token,
        drafts=drafts,
        model_version=version,
        model_versions_by_kind={**by_kind, SuggestionKind.NEXT_ACTION: versions[-1] if versions else ""},
        input_size=input_size,
        processing_type=processing_path(replay=replay, attempts=request.attempts),
        retrieval_method=settings.AI_RETRIEVAL_METHOD,
        suggestion_kinds=sorted(wanted) if wanted is not None else None,
        duration_ms=duration_ms,
        timings=timings,
    )
    if stored is None:
        return Outcome(status="lost_claim", request_id=str(request.pk))
    return Outcome(
        status="done",
        request_id=str(request.pk),
        suggestions=len(stored),
        model_version=version,
        duration_ms=duration_ms,
    )
