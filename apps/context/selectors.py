"""Reads for sessions, participants, context events and preferences."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import F, Func, IntegerField, QuerySet, TextField, Value
from django.db.models.functions import Cast, Coalesce, Length

from apps.caching.selectors import (
    cache_key,
    get_or_load,
    model_fingerprint,
    participants_cache_tag,
    session_cache_tag,
)
from apps.common.exceptions import NotFound
from apps.context.models import ContextEvent, Participant, Session, UserPreference

# The lookups behind every request and WebSocket frame, and the snapshot, go
# through the multi-level cache (apps/caching); the services invalidate them
# after commit. TTLs only bound the damage of a write that bypasses services.
SESSION_CACHE_TTL = 60.0
SNAPSHOT_CACHE_TTL = 30.0


def session_cache_key(session_id: Any) -> str:
    from django.contrib.auth import get_user_model

    # Pickled model instances: the key changes with the models' columns.
    version = model_fingerprint(Session) + model_fingerprint(get_user_model())
    return cache_key("ctx.session", session_id, version=version)


def participant_cache_key(session_id: Any, user_id: Any) -> str:
    return cache_key("ctx.participant", session_id, user_id, version=model_fingerprint(Participant))


def snapshot_cache_key(session_id: Any) -> str:
    # Bump the version when the snapshot dict changes shape.
    return cache_key("ctx.snapshot", session_id, version=1)


def _as_uuid(value: Any) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError) as exc:
        raise NotFound("Session not found.") from exc


def session_get_for_user(*, session_id: Any, user: AbstractBaseUser) -> Session:
    """The session, if ``user`` is an active participant; 404 otherwise (never 403)."""
    sid = _as_uuid(session_id)
    if participant_get(session_id=sid, user=user) is None:
        raise NotFound("Session not found.")
    session = get_or_load(
        session_cache_key(sid),
        # The owner comes along for serializers; its password hash stays out of Redis.
        lambda: Session.objects.select_related("owner").defer("owner__password").filter(pk=sid).first(),
        ttl=SESSION_CACHE_TTL,
        tags=(session_cache_tag(sid),),
    )
    if session is None:
        raise NotFound("Session not found.")
    return session


def session_ref_for_participant(*, session_id: Any, user: AbstractBaseUser) -> Session:
    """The session by id alone, once ``user`` is known to be an active participant; 404 otherwise.

    For writes that lock and re-read the row themselves (event appends): the
    participant check is cached across appends, while the cached session is
    invalidated by every append (its ``last_seq`` moves), so loading it here
    would cost a database read per append for nothing.
    """
    sid = _as_uuid(session_id)
    if participant_get(session_id=sid, user=user) is None:
        raise NotFound("Session not found.")
    return Session(pk=sid)


def participant_get(*, session_id: Any, user: AbstractBaseUser) -> Participant | None:
    sid = _as_uuid(session_id)
    user_id = getattr(user, "pk", None)
    if user_id is None:
        return None
    # "Not a participant" is cached too (negative TTL); participant_add invalidates it.
    return get_or_load(
        participant_cache_key(sid, user_id),
        lambda: Participant.objects.filter(session_id=sid, user_id=user_id, left_at__isnull=True).first(),
        ttl=SESSION_CACHE_TTL,
        tags=(session_cache_tag(sid), participants_cache_tag(sid)),
    )


def session_list_for_user(
    *, user: AbstractBaseUser, state: str | None = None, search: str | None = None
) -> QuerySet[Session]:
    qs = Session.objects.filter(participants__user=user, participants__left_at__isnull=True).select_related("owner")
    if state:
        qs = qs.filter(state=state)
    if search:
        qs = qs.filter(title__icontains=search)
    return qs.order_by("-created_at", "id")


def participant_list(*, session: Session) -> QuerySet[Participant]:
    return (
        Participant.objects.filter(session=session, left_at__isnull=True).select_related("user").order_by("joined_at")
    )


def context_event_list(*, session: Session, after_seq: int = 0, limit: int | None = None) -> QuerySet[ContextEvent]:
    qs = ContextEvent.objects.filter(session=session, seq__gt=after_seq).select_related("author").order_by("seq")
    if limit is not None:
        qs = qs[:limit]
    return qs


# What an event weighs on the wire beyond its data, user and client_msg_id: the
# keys, seq, type, created_at and punctuation of its JSON (147 bytes at most),
# plus the WebSocket frame's "type" key.
EVENT_ENVELOPE_BYTES = 170


@dataclass(frozen=True)
class EventPage:
    events: list[ContextEvent]
    has_more: bool  # more events follow the page (it stopped at its count or its byte cap)


def context_event_page(
    *, session: Session, after_seq: int, limit: int, max_bytes: int, upto_seq: int | None = None
) -> EventPage:
    """Events with ``after_seq < seq (<= upto_seq)`` in seq order: at most ``limit`` and about ``max_bytes``.

    The page stops before the event that would take it past ``max_bytes``, but
    always holds at least one (an event larger than the cap comes alone), so a
    reader following the pages always moves on. Sizes are read first, in SQL,
    for at most ``limit + 1`` rows (the JSON text of ``data``, the author's name,
    ``client_msg_id``, plus ``EVENT_ENVELOPE_BYTES``): only the events that fit
    are loaded into this process.
    """
    rows = ContextEvent.objects.filter(session=session, seq__gt=after_seq)
    if upto_seq is not None:
        rows = rows.filter(seq__lte=upto_seq)
    sizes = list(
        rows.order_by("seq")
        .annotate(
            nbytes=Func(Cast("data", output_field=TextField()), function="octet_length", output_field=IntegerField())
            + Length("client_msg_id")
            + Coalesce(Length(F("author__username")), Value(0))
        )
        .values_list("seq", "nbytes")[: limit + 1]
    )
    total = 0
    last: int | None = None
    taken = 0
    for seq, nbytes in sizes[:limit]:
        size = nbytes + EVENT_ENVELOPE_BYTES
        if taken and total + size > max_bytes:
            break
        total += size
        last = seq
        taken += 1
    if last is None:
        return EventPage(events=[], has_more=False)
    events = list(
        ContextEvent.objects.filter(session=session, seq__gt=after_seq, seq__lte=last)
        .select_related("author")
        .order_by("seq")
    )
    return EventPage(events=events, has_more=taken < len(sizes))


def session_idle_ids(*, idle_before: Any, after: Any = None, limit: int = 500) -> list[uuid.UUID]:
    """Open sessions with no activity since ``idle_before``, by id, after ``after`` (expiry job chunks)."""
    qs = Session.objects.filter(state=Session.State.OPEN, last_activity_at__lt=idle_before)
    if after is not None:
        qs = qs.filter(pk__gt=_as_uuid(after))
    return list(qs.order_by("pk").values_list("pk", flat=True)[:limit])


def session_last_seq(*, session_id: Any) -> int:
    return Session.objects.filter(pk=_as_uuid(session_id)).values_list("last_seq", flat=True).first() or 0


def session_is_open(*, session_id: Any) -> bool:
    """Whether the session exists and is open; False for an id that is not a UUID."""
    try:
        sid = _as_uuid(session_id)
    except NotFound:
        return False
    session = Session.objects.filter(pk=sid).first()
    return session is not None and session.state == Session.State.OPEN


# --- what the AI reads ----------------------------------------------------------


def context_event_text(event_type: str, data: Any) -> str:
    """The text the AI reads from an event: ``data.text``, else the action and its target."""
    if not isinstance(data, dict):
        return ""
    text = data.get("text")
    if isinstance(text, str) and text.strip():
        return text.strip()
    if event_type == ContextEvent.EventType.USER_ACTION and isinstance(data.get("action"), str):
        target = data.get("target")
        return f"{data['action']} {target}".strip() if isinstance(target, str) else data["action"]
    return ""


@dataclass(frozen=True)
class InferenceInputs:
    """What one inference request reads from its session (plain data).

    ``trigger_seq``/``trigger_text``/``trigger_author_id``: the event at
    ``upto_seq`` (None/""/None when not read or absent; the author id is None
    too when its user was deleted). ``candidates``: retrieval candidates, each
    ``{"session_id", "seq", "text", "event_type", "author_id", "same_session"}``
    (always this session, ``same_session`` always true; ``author_id`` the
    event author's user id, None when deleted), newest first; empty texts
    skipped. ``recent_actions``: the latest ``user_action`` names as
    ``(seq, action)``, oldest first.
    """

    trigger_seq: int | None
    trigger_text: str
    candidates: tuple[dict[str, Any], ...]
    recent_actions: tuple[tuple[int, str], ...]
    trigger_author_id: int | None = None


def inference_inputs_get(
    *,
    session_id: Any,
    upto_seq: int | None,
    from_trigger: bool,
    candidates_limit: int = 200,
    actions_limit: int = 20,
) -> InferenceInputs:
    """Everything the inference pipeline reads from context for one request.

    Tenant isolation: every read is of this one session. What the AI makes of
    it is stored with the session and shown to each of its participants (now
    and later, viewers included), so it may contain only what every one of
    them may already read; another session's text never qualifies, whoever
    asked (see "Tenant isolation" in docs/architecture.md).

    ``from_trigger`` (an ``auto`` request): the trigger event at ``upto_seq``
    is read; candidates are read only when it has text, and the trigger itself
    is left out of them. Otherwise (a ``query`` request) candidates are always
    read. Candidates are the session's text-bearing events (``seq <=
    upto_seq``, up to ``candidates_limit``), newest first. ``actions_limit`` >
    0 reads that many latest actions.
    """
    sid = _as_uuid(session_id)
    trigger_seq: int | None = None
    trigger_text = ""
    trigger_author_id: int | None = None
    want_candidates = not from_trigger
    if from_trigger and upto_seq is not None:
        event = (
            ContextEvent.objects.filter(session_id=sid, seq=upto_seq)
            .values("seq", "event_type", "data", "author_id")
            .first()
        )
        if event is not None:
            trigger_seq = event["seq"]
            trigger_author_id = event["author_id"]
            trigger_text = context_event_text(event["event_type"], event["data"])
            want_candidates = bool(trigger_text)
    candidates: list[dict[str, Any]] = []
    if want_candidates:
        candidates = _retrieval_candidates(sid=sid, upto_seq=upto_seq, limit=candidates_limit)
        if trigger_seq is not None:
            candidates = [c for c in candidates if c["seq"] != trigger_seq]
    actions = _recent_actions(sid=sid, upto_seq=upto_seq, limit=actions_limit) if actions_limit > 0 else []
    return InferenceInputs(
        trigger_seq=trigger_seq,
        trigger_text=trigger_text,
        candidates=tuple(candidates),
        recent_actions=tuple(actions),
        trigger_author_id=trigger_author_id,
    )


def _retrieval_candidates(*, sid: uuid.UUID, upto_seq: int | None, limit: int) -> list[dict[str, Any]]:
    own = ContextEvent.objects.filter(session_id=sid).exclude(event_type=ContextEvent.EventType.USER_ACTION)
    if upto_seq is not None:
        own = own.filter(seq__lte=upto_seq)
    rows: list[dict[str, Any]] = []
    # The author's id is a column of the same rows (no join, no query per event).
    values = own.order_by("-seq").values_list("seq", "event_type", "data", "author_id")[:limit]
    for seq, event_type, data, author_id in values:
        text = context_event_text(event_type, data)
        if text:
            row = {"session_id": str(sid), "seq": seq, "text": text, "event_type": event_type, "author_id": author_id}
            rows.append({**row, "same_session": True})
    return rows


def _recent_actions(*, sid: uuid.UUID, upto_seq: int | None, limit: int) -> list[tuple[int, str]]:
    qs = ContextEvent.objects.filter(session_id=sid, event_type=ContextEvent.EventType.USER_ACTION)
    if upto_seq is not None:
        qs = qs.filter(seq__lte=upto_seq)
    rows = list(qs.order_by("-seq").values_list("seq", "data")[:limit])
    rows.reverse()
    return [
        (seq, data["action"]) for seq, data in rows if isinstance(data, dict) and isinstance(data.get("action"), str)
    ]


def user_action_sequences(*, limit_sessions: int = 1000, per_session: int = 200) -> list[list[str]]:
    """``user_action`` name sequences of recent sessions (oldest first), for the frequency baseline."""
    session_ids = list(
        ContextEvent.objects.filter(event_type=ContextEvent.EventType.USER_ACTION)
        .order_by()  # the model's default ordering would make DISTINCT per (session, seq)
        .values_list("session_id", flat=True)
        .distinct()[:limit_sessions]
    )
    sequences: list[list[str]] = []
    for sid in session_ids:
        rows = (
            ContextEvent.objects.filter(session_id=sid, event_type=ContextEvent.EventType.USER_ACTION)
            .order_by("-seq")
            .values_list("data", flat=True)[:per_session]
        )
        actions = [
            d["action"] for d in reversed(list(rows)) if isinstance(d, dict) and isinstance(d.get("action"), str)
        ]
        if actions:
            sequences.append(actions)
    return sequences


def context_event_to_dict(event: ContextEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "event_type": event.event_type,
        "data": event.data,
        "user": event.author.username if event.author_id and event.author else None,
        "client_msg_id": event.client_msg_id or None,
        "created_at": event.created_at.isoformat(),
    }


def context_snapshot(*, session: Session) -> dict[str, Any]:
    """The session as a client needs it to (re)start: state, people, recent events.

    ``last_seq`` is read first and the events are bounded by it: seq and event
    commit in one transaction, so every event up to ``last_seq`` is visible and
    a client that resumes ``after_seq=last_seq`` misses nothing. Cached per
    session (plain data); an event append or a participant change invalidates it.
    """
    return get_or_load(
        snapshot_cache_key(session.pk),
        lambda: _context_snapshot_load(session=session),
        ttl=SNAPSHOT_CACHE_TTL,
        tags=(session_cache_tag(session.pk),),
    )


def _context_snapshot_load(*, session: Session) -> dict[str, Any]:
    fresh = Session.objects.filter(pk=session.pk).values("last_seq", "state", "title", "metadata").get()
    recent = list(
        ContextEvent.objects.filter(session=session, seq__lte=fresh["last_seq"])
        .select_related("author")
        .order_by("-seq")[: settings.SNAPSHOT_RECENT_EVENTS]
    )
    recent.reverse()
    participants = [
        {"username": p.user.username, "role": p.role, "joined_at": p.joined_at.isoformat()}
        for p in participant_list(session=session)
    ]
    return {
        "session_id": str(session.pk),
        "title": fresh["title"],
        "state": fresh["state"],
        "metadata": fresh["metadata"],
        "last_seq": fresh["last_seq"],
        "participants": participants,
        "recent_events": [context_event_to_dict(e) for e in recent],
    }


def preferences_get(*, user: AbstractBaseUser) -> UserPreference:
    preference = UserPreference.objects.filter(user=user).first()
    return preference or UserPreference(user=user)
