"""Writes for sessions, participants, context events and preferences.

Every function is keyword-only, runs in one transaction, and does its side
effects (broadcasts, publishes) only after commit.

Long on purpose: every write of the domain (sessions, participants, events,
preferences), the API's and the admin's, shares the private helpers that emit
the events, drop the caches and tell open sockets; split apart, an edge could
again write without them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from apps.caching.services import cache_invalidate_keys, cache_invalidate_tags
from apps.common.exceptions import ApplicationError, Conflict, NotFound, PermissionDenied, ValidationFailed
from apps.context.hooks import hooks
from apps.context.models import ContextEvent, Participant, Session, UserPreference
from apps.context.quotas import NO_RESERVATION, EventQuotaExceeded, event_quota_reserve
from apps.context.selectors import (
    context_event_to_dict,
    participants_cache_tag,
    session_cache_key,
    session_cache_tag,
    snapshot_cache_key,
)
from apps.context.validation import client_msg_id_check, event_data_check
from apps.eventbus.services import OutboxEvent, outbox_event_add, outbox_events_add_bulk

User = get_user_model()


@dataclass(frozen=True)
class EventInput:
    event_type: str
    data: dict[str, Any] = field(default_factory=dict)
    client_msg_id: str = ""


def _participant_for(*, session: Session, user: AbstractBaseUser) -> Participant:
    participant = Participant.objects.filter(session=session, user=user, left_at__isnull=True).first()
    if participant is None:
        # Outsiders learn nothing about the session, not even that it exists.
        raise NotFound("Session not found.")
    return participant


def session_create(*, owner: AbstractBaseUser, title: str, metadata: dict[str, Any] | None = None) -> Session:
    with transaction.atomic():
        session = Session.objects.create(owner=owner, title=title, metadata=metadata or {})
        Participant.objects.create(session=session, user=owner, role=Participant.Role.OWNER)
        outbox_event_add(
            event_type="session.created",
            session_id=session.id,
            user_id=owner.pk,
            data={"title": session.title, "metadata": session.metadata},
        )
    return session


def session_update(
    *,
    session: Session,
    actor: AbstractBaseUser,
    title: str | None = None,
    metadata: dict[str, Any] | None = None,
    state: str | None = None,
) -> Session:
    with transaction.atomic():
        locked = Session.objects.select_for_update().filter(pk=session.pk).first()
        if locked is None:  # deleted by a concurrent request
            raise NotFound("Session not found.")
        session = locked
        participant = _participant_for(session=session, user=actor)
        if not participant.can_write:
            raise PermissionDenied("Viewers cannot change the session.")
        if state is not None and state != session.state:
            if participant.role != Participant.Role.OWNER:
                raise PermissionDenied("Only the owner can open or close the session.")
            session.state = state
            session.closed_at = timezone.now() if state == Session.State.CLOSED else None
            if state == Session.State.CLOSED:
                outbox_event_add(
                    event_type="session.closed",
                    session_id=session.id,
                    user_id=actor.pk,
                    data={"closed_at": session.closed_at},
                )
        if title is not None:
            session.title = title
        if metadata is not None:
            session.metadata = metadata
        session.save()
        _after_session_changed(session)
    return session


def _after_session_changed(session: Session) -> None:
    cache_invalidate_tags(tags=[session_cache_tag(session.pk)])  # now and again after commit
    # Open sockets learn the new title and state live (closed: writes now answer session_closed).
    changed = {
        "type": "session",
        "event": "closed" if session.state == Session.State.CLOSED else "updated",
        "session": {"id": str(session.pk), "title": session.title, "state": session.state},
    }
    transaction.on_commit(lambda: hooks.after_commit_message(session_id=session.pk, message=changed))


def session_save_by_admin(*, session: Session, changed_fields: Sequence[str]) -> Session:
    """An admin edit of a session (title, metadata, state): saved with the same side effects as the API."""
    with transaction.atomic():
        was = Session.objects.select_for_update().filter(pk=session.pk).values("state").first()
        if was is not None and "state" in changed_fields and session.state != was["state"]:
            session.closed_at = timezone.now() if session.state == Session.State.CLOSED else None
            if session.state == Session.State.CLOSED:
                outbox_event_add(
                    event_type="session.closed",
                    session_id=session.pk,
                    user_id=None,
                    data={"closed_at": session.closed_at},
                )
        session.save()
        _after_session_changed(session)
    return session


def session_close(*, session: Session, actor: AbstractBaseUser) -> Session:
    return session_update(session=session, actor=actor, state=Session.State.CLOSED)


def session_expire_idle(*, session_id: Any, idle_before: Any) -> bool:
    """Close the session if it is still open and idle since before ``idle_before`` (the expiry job).

    Re-checked under the row lock, so an event appended after the job listed
    the session keeps it open; closed as its owner, so ``session.closed`` is
    emitted exactly as for any close.
    """
    with transaction.atomic():
        session = (
            Session.objects.select_for_update(of=("self",))
            .select_related("owner")
            .filter(pk=session_id, state=Session.State.OPEN, last_activity_at__lt=idle_before)
            .first()
        )
        if session is None:
            return False
        session_update(session=session, actor=session.owner, state=Session.State.CLOSED)
    return True


def session_delete(*, session: Session, actor: AbstractBaseUser) -> None:
    with transaction.atomic():
        participant = _participant_for(session=session, user=actor)
        if participant.role != Participant.Role.OWNER:
            raise PermissionDenied("Only the owner can delete the session.")
        session_pk = session.pk
        session.delete()
        _after_session_deleted(session_pk)


def session_delete_by_admin(*, session_id: Any) -> bool:
    """Delete a session without the owner check (admin); the same cache drops and socket closes."""
    with transaction.atomic():
        deleted, _ = Session.objects.filter(pk=session_id).delete()
        if deleted:
            _after_session_deleted(session_id)
    return bool(deleted)


def _after_session_deleted(session_pk: Any) -> None:
    cache_invalidate_tags(tags=[session_cache_tag(session_pk), participants_cache_tag(session_pk)])
    # Every open socket on it hears why, then closes (4404).
    gone = {"type": "session", "event": "deleted", "session": {"id": str(session_pk)}}
    transaction.on_commit(lambda: hooks.after_commit_message(session_id=session_pk, message=gone))


def _not_addable() -> ValidationFailed:
    """The one refusal of ``participant_add``: a missing name, an inactive user and the owner look alike.

    Whatever the reason, the answer (status, code, message, details) is the
    same and never repeats the name, so adding users is no way to learn which
    usernames exist or are active.
    """
    return ValidationFailed(
        "This user cannot be added to the session.",
        code="user_not_addable",
        details={"username": ["Cannot be added: no active user by this name may join as this role."]},
    )


def participant_add(*, session: Session, actor: AbstractBaseUser, username: str, role: str) -> Participant:
    if role not in (Participant.Role.EDITOR, Participant.Role.VIEWER):
        raise ValidationFailed("Role must be 'editor' or 'viewer'.", details={"role": [f"Invalid role {role!r}."]})
    with transaction.atomic():
        actor_participant = _participant_for(session=session, user=actor)
        if actor_participant.role != Participant.Role.OWNER:
            raise PermissionDenied("Only the owner can add participants.")
        user = User.objects.filter(username=username, is_active=True).first()
        if user is None:
            raise _not_addable()
        participant = Participant.objects.select_for_update().filter(session=session, user=user).first()
        joined = participant is None or participant.left_at is not None
        if participant is None:
            participant = Participant.objects.create(session=session, user=user, role=role)
        elif participant.role == Participant.Role.OWNER:
            raise _not_addable()
        else:
            participant.role = role
            participant.left_at = None
            participant.save(update_fields=["role", "left_at", "updated_at"])
        cache_invalidate_tags(tags=[participants_cache_tag(session.pk)])
        cache_invalidate_keys(keys=[snapshot_cache_key(session.pk)])
        if joined:
            outbox_event_add(
                event_type="participant.joined",
                session_id=session.pk,
                user_id=actor.pk,
                data={"participant_user_id": user.pk, "username": user.username, "role": role},
            )
            added = {"type": "presence", "event": "added", "user": user.username, "state": None, "role": role}
            transaction.on_commit(lambda: hooks.after_commit_message(session_id=session.pk, message=added))
    return participant


def participant_remove(*, session: Session, actor: AbstractBaseUser, username: str) -> Participant:
    with transaction.atomic():
        actor_participant = _participant_for(session=session, user=actor)
        participant = (
            Participant.objects.select_for_update(of=("self",))
            .select_related("user")
            .filter(session=session, user__username=username, left_at__isnull=True)
            .first()
        )
        if participant is None:
            raise NotFound("Participant not found.")
        is_self = participant.user_id == actor.pk
        if not is_self and actor_participant.role != Participant.Role.OWNER:
            raise PermissionDenied("Only the owner can remove other participants.")
        if participant.role == Participant.Role.OWNER:
            raise Conflict("The owner cannot leave the session; close or delete it instead.", code="owner_cannot_leave")
        _participant_leave(participant=participant, actor_id=actor.pk, removed=not is_self)
    return participant


def participant_evict(*, participant_id: Any, actor: AbstractBaseUser | None = None) -> Participant | None:
    """Remove a participant without the owner check (admin, operators); None if already gone.

    The same writes, events and socket closes as ``participant_remove``.
    """
    with transaction.atomic():
        participant = (
            Participant.objects.select_for_update(of=("self",))
            .select_related("user")
            .filter(pk=participant_id, left_at__isnull=True)
            .first()
        )
        if participant is None:
            return None
        _participant_leave(participant=participant, actor_id=getattr(actor, "pk", None), removed=True)
    return participant


def participant_caches_invalidate(*, session_id: Any) -> None:
    """Drop a session's cached membership (after an edit outside the services above: admin)."""
    cache_invalidate_tags(tags=[participants_cache_tag(session_id)])
    cache_invalidate_keys(keys=[snapshot_cache_key(session_id)])


def _participant_leave(*, participant: Participant, actor_id: Any, removed: bool) -> None:
    """Mark ``participant`` (locked by the caller) as left; caches, event and sockets follow."""
    session_pk = participant.session_id
    user_id = participant.user_id
    username = participant.user.get_username()
    participant.left_at = timezone.now()
    participant.save(update_fields=["left_at", "updated_at"])
    # The removed user must lose access once this commits, in every process.
    cache_invalidate_tags(tags=[participants_cache_tag(session_pk)])
    cache_invalidate_keys(keys=[snapshot_cache_key(session_pk)])
    outbox_event_add(
        event_type="participant.left",
        session_id=session_pk,
        user_id=actor_id,
        data={"participant_user_id": user_id, "username": username, "removed": removed},
    )
    left = {"type": "presence", "event": "removed", "user": username, "state": None}
    transaction.on_commit(lambda: hooks.after_commit_message(session_id=session_pk, message=left))
    # The user's own sockets on this session close (4404), through their per-user group.
    transaction.on_commit(
        lambda: hooks.after_commit_access_revoked(user_id=user_id, session_id=session_pk, reason="removed")
    )


def _validate_event_inputs(events: Sequence[EventInput]) -> None:
    if not events:
        raise ValidationFailed("At least one event is required.", code="empty_batch")
    if len(events) > settings.EVENT_BATCH_MAX:
        raise ValidationFailed(
            f"A batch holds at most {settings.EVENT_BATCH_MAX} events.",
            code="batch_too_large",
            details={"max": settings.EVENT_BATCH_MAX, "got": len(events)},
        )
    seen: set[str] = set()
    for index, event in enumerate(events):
        if event.event_type not in ContextEvent.EventType.values:
            raise ValidationFailed(
                "Unknown event type.",
                details={"index": index, "event_type": [f"Must be one of {sorted(ContextEvent.EventType.values)}."]},
            )
        # The same check for every edge (REST, WebSocket, internal callers): apps/context/validation.py.
        event_data_check(event.data, index=index)
        client_msg_id_check(event.client_msg_id, index=index)
        if event.client_msg_id:
            if event.client_msg_id in seen:
                raise ValidationFailed("Duplicate client_msg_id in one batch.", details={"index": index})
            seen.add(event.client_msg_id)


def _outbox_event_for(event: ContextEvent) -> OutboxEvent:
    """``context.updated`` for context updates and notes, ``user.action`` for user actions."""
    if event.event_type == ContextEvent.EventType.USER_ACTION:
        action = event.data.get("action")
        data = {
            "seq": event.seq,
            "action": action if isinstance(action, str) else None,
            "target": event.data.get("target"),
            "data": event.data,
        }
        return OutboxEvent(event_type="user.action", session_id=event.session_id, user_id=event.author_id, data=data)
    data = {"seq": event.seq, "event_type": event.event_type, "data": event.data, "client_msg_id": event.client_msg_id}
    return OutboxEvent(event_type="context.updated", session_id=event.session_id, user_id=event.author_id, data=data)


def context_event_append(
    *, session: Session, author: AbstractBaseUser, events: Sequence[EventInput]
) -> list[ContextEvent]:
    """Append events in order; returns them with ``seq`` set.

    Events whose ``client_msg_id`` is already stored are not written again: the
    stored event comes back in their place with ``was_created = False``.

    The events count against the author's quota of stored events
    (``apps/context/quotas.py``): over it, ``EventQuotaExceeded`` (429) and
    nothing is written; what is not stored (duplicates, a failure) is given back.
    """
    _validate_event_inputs(events)
    try:
        reservation = event_quota_reserve(user_id=author.pk, count=len(events))
    except EventQuotaExceeded:
        if not _all_stored_already(session=session, author=author, events=events):
            raise
        # A retry of events already stored stores nothing new: it is answered, not refused.
        reservation = NO_RESERVATION
    try:
        result = _context_event_append(session=session, author=author, events=events)
    except BaseException:
        reservation.release(len(events))
        raise
    reservation.release(sum(1 for event in result if not getattr(event, "was_created", False)))
    return result


def _all_stored_already(*, session: Session, author: AbstractBaseUser, events: Sequence[EventInput]) -> bool:
    msg_ids = {e.client_msg_id for e in events}
    if "" in msg_ids:
        return False
    stored = ContextEvent.objects.filter(session_id=session.pk, author_id=author.pk, client_msg_id__in=msg_ids)
    return stored.count() == len(msg_ids)


# One statement takes the session row lock, checks it is open and that the
# author may write, moves last_seq past the new events and inserts them: the
# UPDATE's row lock serialises appends per session (PostgreSQL re-checks its
# WHERE on the newest row version after a wait, so a close committed meanwhile
# is seen), and the events get seq last_seq - n + 1 .. last_seq in input order.
# The INSERT reads its rows from the UPDATE's, so it runs under the lock. No row
# comes back when the session is gone or closed or the author is no writer
# (_append_refusal then says which); a row with a NULL id when every event's
# client_msg_id was already stored. An event whose client_msg_id is stored
# (a retry: the unique index is the arbiter, and it sees every commit) is left
# out; the caller then undoes the statement and appends only the new ones.
_APPEND_SQL = """
WITH s AS (
    UPDATE {session} SET last_seq = last_seq + %(n)s, last_activity_at = %(now)s
    WHERE id = %(sid)s AND state = %(open)s AND EXISTS (
        SELECT 1 FROM {participant} p
        WHERE p.session_id = %(sid)s AND p.user_id = %(uid)s AND p.left_at IS NULL AND p.role = ANY(%(writers)s)
    )
    RETURNING last_seq
), inserted AS (
    INSERT INTO {event} (session_id, seq, event_type, data, author_id, client_msg_id, created_at)
    SELECT %(sid)s, s.last_seq - %(n)s + e.ord, e.event_type, e.data::jsonb, %(uid)s, e.client_msg_id, %(now)s
    FROM s, unnest(%(types)s::text[], %(datas)s::text[], %(msg_ids)s::text[])
        WITH ORDINALITY AS e(event_type, data, client_msg_id, ord)
    ON CONFLICT (session_id, client_msg_id) WHERE NOT (client_msg_id = '') DO NOTHING
    RETURNING id, seq
)
SELECT s.last_seq, inserted.id, inserted.seq FROM s LEFT JOIN inserted ON true
"""

# Undo _APPEND_SQL when some of its events were already stored (under the lock it took).
_UNDO_SQL = """
WITH d AS (DELETE FROM {event} WHERE id = ANY(%(ids)s))
UPDATE {session} SET last_seq = last_seq - %(n)s WHERE id = %(sid)s
"""

# The session row and the author's membership: why an append matched nothing.
_MEMBERSHIP_SQL = """
SELECT s.state, p.role FROM {session} s
LEFT JOIN {participant} p ON p.session_id = s.id AND p.user_id = %(uid)s AND p.left_at IS NULL
WHERE s.id = %(sid)s
"""

_WRITERS = [Participant.Role.OWNER.value, Participant.Role.EDITOR.value]


def _sql(template: str) -> str:
    return template.format(
        session=Session._meta.db_table, participant=Participant._meta.db_table, event=ContextEvent._meta.db_table
    )


def _append_refusal(*, session_id: Any, author_id: Any) -> ApplicationError | None:
    """Why this author may not append to this session now, or None."""
    with connection.cursor() as cursor:
        cursor.execute(_sql(_MEMBERSHIP_SQL), {"sid": session_id, "uid": author_id})
        row = cursor.fetchone()
    if row is None or row[1] is None:
        # Outsiders learn nothing about the session, not even that it exists.
        return NotFound("Session not found.")
    state, role = row
    if role not in _WRITERS:
        return PermissionDenied("Viewers cannot add events.")
    if state != Session.State.OPEN:
        return Conflict("The session is closed.", code="session_closed")
    return None


def _insert_events(
    *, session_id: Any, author: AbstractBaseUser, events: Sequence[EventInput], now: Any
) -> list[ContextEvent] | None:
    """``_APPEND_SQL``: None when refused; fewer events than given when some were stored already."""
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    params = {
        "sid": session_id,
        "uid": author.pk,
        "n": len(events),
        "now": now,
        "open": Session.State.OPEN.value,
        "writers": _WRITERS,
        "types": [e.event_type for e in events],
        "datas": [dumps(e.data) for e in events],
        "msg_ids": [e.client_msg_id for e in events],
    }
    with connection.cursor() as cursor:
        cursor.execute(_sql(_APPEND_SQL), params)
        fetched = cursor.fetchall()
    if not fetched:
        return None
    by_seq = {seq: pk for _, pk, seq in fetched if pk is not None}
    first_seq = fetched[0][0] - len(events) + 1
    created: list[ContextEvent] = []
    for i, e in enumerate(events):
        pk = by_seq.get(first_seq + i)
        if pk is None:
            continue
        event = ContextEvent(
            id=pk,
            session_id=session_id,
            seq=first_seq + i,
            event_type=e.event_type,
            data=e.data,
            author=author,
            client_msg_id=e.client_msg_id,
            created_at=now,
        )
        event._state.adding = False
        event._state.db = connection.alias
        event.was_created = True
        created.append(event)
    return created


def _context_event_append(
    *, session: Session, author: AbstractBaseUser, events: Sequence[EventInput]
) -> list[ContextEvent]:
    """The append's transaction: one statement, the outbox COPY and the commit.

    Refusals are decided before anything is written and raised after the block,
    so the block needs no savepoint of its own inside a caller's transaction
    (the Idempotency-Key path): a refusal leaves that transaction usable.
    """
    refusal: ApplicationError | None = None
    existing: dict[str, ContextEvent] = {}
    created: list[ContextEvent] = []
    with transaction.atomic(savepoint=False):
        now = timezone.now()
        inserted = _insert_or_refuse(session=session, author=author, events=events, now=now)
        if isinstance(inserted, ApplicationError):
            refusal = inserted
        elif len(inserted) == len(events):
            created = inserted
        else:
            # Some client_msg_id were stored already (a retry): undo the statement, whose seqs
            # now have holes, and append only the new events, still under the session lock.
            with connection.cursor() as cursor:
                cursor.execute(_sql(_UNDO_SQL), {"ids": [e.pk for e in inserted], "n": len(events), "sid": session.pk})
            msg_ids = [e.client_msg_id for e in events if e.client_msg_id]
            stored = ContextEvent.objects.filter(session=session, client_msg_id__in=msg_ids)
            existing = {ev.client_msg_id: ev for ev in stored.select_related("author").order_by()}
            fresh = [e for e in events if not (e.client_msg_id and e.client_msg_id in existing)]
            if fresh:
                again = _insert_or_refuse(session=session, author=author, events=fresh, now=now)
                if isinstance(again, ApplicationError):
                    refusal = again
                elif len(again) != len(fresh):  # cannot happen under the lock; never store holes
                    raise Conflict("The events changed during the append; retry.", code="append_retry")
                else:
                    created = again
        if created:
            # The outbox rows commit with the events, so the relay publishes (and the
            # subscribers' tasks run) if and only if the events were stored.
            outbox_events_add_bulk(events=[_outbox_event_for(event) for event in created])
    if refusal is not None:
        raise refusal
    if created:
        _after_events_stored(session_id=session.pk, created=created)
    created_iter = iter(created)
    result: list[ContextEvent] = []
    for e in events:
        if e.client_msg_id and e.client_msg_id in existing:
            stored_event = existing[e.client_msg_id]
            stored_event.was_created = False
            result.append(stored_event)
        else:
            result.append(next(created_iter))
    return result


def _insert_or_refuse(
    *, session: Session, author: AbstractBaseUser, events: Sequence[EventInput], now: Any
) -> list[ContextEvent] | ApplicationError:
    """``_insert_events``, or the refusal when it matched nothing."""
    for _attempt in range(3):
        inserted = _insert_events(session_id=session.pk, author=author, events=events, now=now)
        if inserted is not None:
            return inserted
        refusal = _append_refusal(session_id=session.pk, author_id=author.pk)
        if refusal is not None:
            return refusal
        # Nothing refused it, yet it matched nothing: the session or the role changed
        # between the two statements (closed and reopened). Try again.
    return Conflict("The session changed during the append; retry.", code="append_retry")


def _after_events_stored(*, session_id: Any, created: list[ContextEvent]) -> None:
    """Cache invalidation, then the broadcast; after the commit, never under the session row lock.

    At the top level the append has committed here: one invalidation pass, then
    the push. Inside a caller's transaction the invalidation runs now and again
    when that commits (``cache_invalidate_keys``), and the push after it, in that
    order: a client that reads the snapshot on seeing the broadcast finds the
    cache already invalidated.
    """
    cache_invalidate_keys(keys=[snapshot_cache_key(session_id), session_cache_key(session_id)])
    # The fast path to live WebSocket clients, after commit (at-most-once:
    # clients refill any gap by seq from PostgreSQL). At the top level on_commit runs it at once.
    frames = [context_event_to_dict(event) for event in created]
    transaction.on_commit(lambda: hooks.after_commit_events(session_id=session_id, events=frames))


def preferences_update(*, user: AbstractBaseUser, **changes: Any) -> UserPreference:
    allowed = {"ai_enabled", "suggestion_kinds", "data"}
    unknown = set(changes) - allowed
    if unknown:
        raise ApplicationError("Unknown preference fields.", code="invalid", details={"unknown": sorted(unknown)})
    with transaction.atomic():
        preference, _ = UserPreference.objects.select_for_update().get_or_create(user=user)
        for name, value in changes.items():
            setattr(preference, name, value)
        preference.save()
    return preference
