"""Reads for job runs, the activity the rollups aggregate, the live activity counters and the stats endpoint.

The activity aggregates read ``apps.context`` and ``apps.ai`` tables directly,
read-only: they are GROUP BY queries over a day's rows that neither app has a
use for, and routing them through per-row selectors would cost a query per
session.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeGuard

from django.db.models import Count, QuerySet, Sum
from django.db.models.fields.json import KT

from apps.ai.models import Suggestion, SuggestionFeedback
from apps.ai.selectors import ACTION_NAME_MAX_CHARS, ACTION_NAME_PATTERN, action_name_valid
from apps.batch.models import DailySessionRollup, DailyUserRollup, JobRun, SessionActivity
from apps.common.exceptions import NotFound
from apps.context.models import ContextEvent, Participant, Session

# The counters of a DailySessionRollup / DailyUserRollup row.
SESSION_FIELDS = ("events", "participants", "suggestions_shown", "suggestions_accepted")
USER_FIELDS = ("events", "sessions", "suggestions_shown", "suggestions_accepted")


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def job_run_list(*, job_name: str | None = None, status: str | None = None) -> QuerySet[JobRun]:
    qs = JobRun.objects.all()
    if job_name:
        qs = qs.filter(job_name=job_name)
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("-started_at", "id")


def job_run_get(*, run_id: Any) -> JobRun:
    try:
        rid = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
    except (TypeError, ValueError, AttributeError) as exc:
        raise NotFound("Job run not found.") from exc
    run = JobRun.objects.filter(pk=rid).first()
    if run is None:
        raise NotFound("Job run not found.")
    return run


def session_activity_get(*, session_id: uuid.UUID | str) -> SessionActivity | None:
    """The live counters of one session (kept by the ``activity`` subscriber), or None before its first event."""
    return SessionActivity.objects.filter(session_id=session_id).first()


def sessions_active_on(*, day: date, after: str | None, limit: int) -> list[uuid.UUID]:
    """Sessions with events, suggestions or feedback on ``day``, ordered by id, after ``after``."""
    start, end = day_bounds(day)
    ids: set[uuid.UUID] = set()
    for model, column in (
        (ContextEvent, "session_id"),
        (Suggestion, "session_id"),
        (SuggestionFeedback, "suggestion__session_id"),
    ):
        qs = model.objects.filter(created_at__gte=start, created_at__lt=end)
        if after:
            qs = qs.filter(**{f"{column}__gt": uuid.UUID(after)})
        ids.update(qs.values_list(column, flat=True).order_by().distinct())
    return sorted(ids)[:limit]


def users_active_on(*, day: date, after: int | None, limit: int) -> list[int]:
    start, end = day_bounds(day)
    ids: set[int] = set()
    for model, column in ((ContextEvent, "author_id"), (SuggestionFeedback, "user_id")):
        qs = model.objects.filter(created_at__gte=start, created_at__lt=end, **{f"{column}__isnull": False})
        if after is not None:
            qs = qs.filter(**{f"{column}__gt": after})
        ids.update(qs.values_list(column, flat=True).order_by().distinct())
    return sorted(ids)[:limit]


def _grouped_on(
    model: Any, *, day: date, column: str, ids: list[Any], where: dict[str, Any] | None = None, **counts: Count
) -> QuerySet:
    """``model``'s rows created on ``day`` whose ``column`` is one of ``ids``, grouped by ``column`` with ``counts``."""
    start, end = day_bounds(day)
    return (
        model.objects.filter(**{f"{column}__in": ids}, created_at__gte=start, created_at__lt=end, **(where or {}))
        .values(column)
        .annotate(**counts)
        .order_by()
    )


def session_activity(*, day: date, session_ids: list[Any]) -> dict[Any, dict[str, int]]:
    rows: dict[Any, dict[str, int]] = {sid: dict.fromkeys(SESSION_FIELDS, 0) for sid in session_ids}
    for row in _grouped_on(
        ContextEvent,
        day=day,
        column="session_id",
        ids=session_ids,
        events=Count("id"),
        participants=Count("author_id", distinct=True),
    ):
        rows[row["session_id"]].update(events=row["events"], participants=row["participants"])
    for row in _grouped_on(Suggestion, day=day, column="session_id", ids=session_ids, n=Count("id")):
        rows[row["session_id"]]["suggestions_shown"] = row["n"]
    for row in _grouped_on(
        SuggestionFeedback,
        day=day,
        column="suggestion__session_id",
        ids=session_ids,
        where={"verdict": "accept"},
        n=Count("id"),
    ):
        rows[row["suggestion__session_id"]]["suggestions_accepted"] = row["n"]
    return rows


def user_activity(*, day: date, user_ids: list[int]) -> dict[int, dict[str, int]]:
    rows: dict[int, dict[str, int]] = {uid: dict.fromkeys(USER_FIELDS, 0) for uid in user_ids}
    for row in _grouped_on(
        ContextEvent,
        day=day,
        column="author_id",
        ids=user_ids,
        events=Count("id"),
        sessions=Count("session_id", distinct=True),
    ):
        rows[row["author_id"]].update(events=row["events"], sessions=row["sessions"])
    # Shown to a user: the day's suggestions in sessions the user takes part in.
    memberships: dict[Any, list[int]] = defaultdict(list)
    for sid, uid in Participant.objects.filter(user_id__in=user_ids).values_list("session_id", "user_id"):
        memberships[sid].append(uid)
    for row in _grouped_on(Suggestion, day=day, column="session_id", ids=list(memberships), n=Count("id")):
        for uid in memberships[row["session_id"]]:
            rows[uid]["suggestions_shown"] += row["n"]
    for row in _grouped_on(
        SuggestionFeedback, day=day, column="user_id", ids=user_ids, where={"verdict": "accept"}, n=Count("id")
    ):
        rows[row["user_id"]]["suggestions_accepted"] = row["n"]
    return rows


def activity_stats(
    *, start: date, end: date, session_id: uuid.UUID | None = None, user_id: int | None = None, top: int = 10
) -> dict[str, Any]:
    """Totals, a per-day series and the busiest sessions between ``start`` and ``end`` (inclusive)."""
    if user_id is not None:
        qs = DailyUserRollup.objects.filter(day__gte=start, day__lte=end, user_id=user_id)
        fields = USER_FIELDS
    else:
        qs = DailySessionRollup.objects.filter(day__gte=start, day__lte=end)
        if session_id is not None:
            qs = qs.filter(session_id=session_id)
        fields = SESSION_FIELDS
    totals = qs.aggregate(**{f: Sum(f) for f in fields})
    totals = {f: totals[f] or 0 for f in fields}
    days = [
        {"day": row["day"].isoformat(), **{f: row[f] or 0 for f in fields}}
        for row in qs.values("day").annotate(**{f: Sum(f) for f in fields}).order_by("day")
    ]
    if user_id is None:
        totals["active_sessions"] = qs.values("session_id").distinct().count()
        totals["active_users"] = (
            DailyUserRollup.objects.filter(day__gte=start, day__lte=end).values("user_id").distinct().count()
            if session_id is None
            else None
        )
    shown = totals["suggestions_shown"]
    totals["acceptance_rate"] = round(totals["suggestions_accepted"] / shown, 4) if shown else None
    result: dict[str, Any] = {"from": start.isoformat(), "to": end.isoformat(), "totals": totals, "days": days}
    if user_id is None and session_id is None:
        result["top_sessions"] = [
            {"session_id": str(row["session_id"]), **{f: row[f] or 0 for f in fields}}
            for row in qs.values("session_id")
            .annotate(**{f: Sum(f) for f in fields})
            .order_by("-events", "session_id")[:top]
        ]
    return result


def job_run_high_water(*, job_name: str, key: str) -> int:
    """``checkpoint[key]`` of the job's latest successful run (0 if none): where an incremental job continues."""
    checkpoint = (
        JobRun.objects.filter(job_name=job_name, status=JobRun.Status.SUCCEEDED)
        .order_by("-finished_at")
        .values_list("checkpoint", flat=True)
        .first()
    )
    value = (checkpoint or {}).get(key)
    return int(value) if isinstance(value, int) else 0


def _text_events(after_id: int) -> QuerySet:
    # user_action events carry an action name, not text the retrieval reads.
    return ContextEvent.objects.filter(id__gt=after_id).exclude(event_type=ContextEvent.EventType.USER_ACTION)


def text_event_count(*, after_id: int) -> int:
    return _text_events(after_id).count()


def text_events_after(*, after_id: int, limit: int) -> list[tuple[int, str]]:
    """``(event id, text)`` of the next ``limit`` text-bearing events after ``after_id``, by id."""
    from apps.ai.selectors import event_text

    rows = _text_events(after_id).order_by("id").values_list("id", "event_type", "data")[:limit]
    return [(event_id, event_text(event_type, data)) for event_id, event_type, data in rows]


def next_action_vocabulary(*, min_users: int, max_names: int) -> frozenset[str]:
    """The action names any model may learn and offer to anyone: the shared next-action vocabulary.

    A name qualifies when it is valid (``apps.ai.selectors.action_name_valid``:
    a short identifier, never a link or text) and was performed by at least
    ``min_users`` distinct users (event authors), so no one user can plant a
    name in other people's suggestions and a name private to one user's
    sessions never reaches another's. At most ``max_names``, most widely used
    first. One GROUP BY over the ``user_action`` events.
    """
    rows = (
        ContextEvent.objects.filter(event_type=ContextEvent.EventType.USER_ACTION, author_id__isnull=False)
        .annotate(action=KT("data__action"))
        .filter(action__regex=ACTION_NAME_PATTERN)
        .values("action")
        .annotate(users=Count("author_id", distinct=True))
        .filter(users__gte=max(1, min_users))
        .order_by("-users", "action")
        .values_list("action", flat=True)[:max_names]
    )
    return frozenset(name for name in rows if len(name) <= ACTION_NAME_MAX_CHARS)


def _allowed(name: Any, vocabulary: Collection[str] | None) -> TypeGuard[str]:
    return action_name_valid(name) and (vocabulary is None or name in vocabulary)


def action_sequences_by_session(
    *, max_sessions: int, vocabulary: Collection[str] | None = None
) -> list[tuple[str, list[str]]]:
    """``(session id, [action, ...])`` of the most recently active sessions with ``user_action`` events.

    Only valid names are kept, and with ``vocabulary`` only names in it (the
    training job passes ``next_action_vocabulary``): a model cannot learn,
    and so cannot offer, a name outside it. One ordered scan over the events
    (streamed), not a query per session.
    """
    with_actions = ContextEvent.objects.filter(event_type=ContextEvent.EventType.USER_ACTION).values("session_id")
    session_ids = list(
        Session.objects.filter(pk__in=with_actions)
        .order_by("-last_activity_at", "pk")
        .values_list("pk", flat=True)[:max_sessions]
    )
    sequences: dict[str, list[str]] = {}
    rows = (
        ContextEvent.objects.filter(session_id__in=session_ids, event_type=ContextEvent.EventType.USER_ACTION)
        .order_by("session_id", "seq")
        .values_list("session_id", "data")
    )
    for session_id, data in rows.iterator(chunk_size=5000):
        action = data.get("action") if isinstance(data, dict) else None
        if _allowed(action, vocabulary):
            sequences.setdefault(str(session_id), []).append(action)
    return list(sequences.items())


def accepted_next_action_examples(
    *, context: int, vocabulary: Collection[str] | None = None
) -> list[tuple[str, list[str], str]]:
    """``(session id, recent actions, accepted action)`` for every accepted ``next_action`` suggestion.

    The recent actions are the session's last ``context`` actions up to the
    suggestion's trigger seq: what the model saw when it made the suggestion.
    Names that are invalid or (with ``vocabulary``) outside it are left out,
    as in ``action_sequences_by_session``; an example whose accepted action
    is left out is dropped.
    """
    examples: list[tuple[str, list[str], str]] = []
    accepted = (
        SuggestionFeedback.objects.filter(verdict="accept", suggestion__kind="next_action")
        .values_list("suggestion__session_id", "suggestion__trigger_seq", "suggestion__content")
        .order_by("created_at")
    )
    for session_id, trigger_seq, content in accepted.iterator(chunk_size=1000):
        action = content.get("action") if isinstance(content, dict) else None
        if not _allowed(action, vocabulary):
            continue
        recent = (
            ContextEvent.objects.filter(
                session_id=session_id, event_type=ContextEvent.EventType.USER_ACTION, seq__lte=trigger_seq
            )
            .order_by("-seq")
            .values_list("data", flat=True)[:context]
        )
        prefix = [
            d["action"] for d in reversed(list(recent)) if isinstance(d, dict) and _allowed(d.get("action"), vocabulary)
        ]
        if prefix:
            examples.append((str(session_id), prefix, action))
    return examples
