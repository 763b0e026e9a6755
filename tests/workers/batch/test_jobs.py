"""Session expiry, retention and daily rollups close, delete and count exactly what they should."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from django.utils import timezone

from apps.batch.jobs import job_execute
from apps.batch.models import DailySessionRollup, DailyUserRollup, JobRun
from apps.context.models import ContextEvent, Session
from apps.context.services import EventInput, context_event_append, session_close
from apps.eventbus.models import OutboxMessage


def _age(session: Session, *, minutes: int) -> None:
    Session.objects.filter(pk=session.pk).update(last_activity_at=timezone.now() - timedelta(minutes=minutes))


def _closed_events() -> set[str]:
    return {
        str(body["session_id"])
        for body in OutboxMessage.objects.filter(routing_key="session.closed").values_list("body", flat=True)
    }


def test_session_expiry_closes_exactly_the_idle_open_sessions(db, session_factory, user):
    # Given: idle for 2 h and 31 min (expire), idle 29 min (keep), closed long ago (keep), fresh (keep)
    idle_long, idle_just, recent, fresh = (session_factory(title=t) for t in ("a", "b", "c", "d"))
    already_closed = session_factory(title="e")
    session_close(session=already_closed, actor=user)
    _age(idle_long, minutes=120)
    _age(idle_just, minutes=31)
    _age(recent, minutes=29)
    _age(already_closed, minutes=500)
    OutboxMessage.objects.filter(routing_key="session.closed").delete()

    run = job_execute(name="session_expiry", params={"idle_minutes": 30, "chunk_size": 1})

    states = dict(Session.objects.values_list("title", "state"))
    assert states == {"a": "closed", "b": "closed", "c": "open", "d": "open", "e": "closed"}
    assert _closed_events() == {str(idle_long.id), str(idle_just.id)}
    assert run.status == JobRun.Status.SUCCEEDED and run.result["closed"] == 2
    assert Session.objects.get(pk=idle_long.pk).closed_at is not None


def test_session_with_activity_after_listing_is_not_closed(db, session_factory, user):
    from apps.context.services import session_expire_idle

    session = session_factory()
    _age(session, minutes=90)
    cutoff = timezone.now() - timedelta(minutes=30)
    context_event_append(session=session, author=user, events=[EventInput("note", {"text": "still here"})])

    assert session_expire_idle(session_id=session.id, idle_before=cutoff) is False
    assert Session.objects.get(pk=session.pk).state == "open"


def test_session_expiry_default_comes_from_settings(db, session_factory, settings):
    settings.SESSION_IDLE_TIMEOUT_MINUTES = 10
    idle, busy = session_factory(title="idle"), session_factory(title="busy")
    _age(idle, minutes=11)
    _age(busy, minutes=9)
    job_execute(name="session_expiry")
    assert dict(Session.objects.values_list("title", "state")) == {"idle": "closed", "busy": "open"}


def _dead_letter(created_at: datetime) -> uuid.UUID:
    from apps.ops.models import DeadLetter

    row = DeadLetter.objects.create(
        message_key=str(uuid.uuid4()),
        queue="ai.batch",
        dead_letter_queue="ai.batch.dlq",
        reason="rejected",
        fingerprint="f" * 64,
    )
    DeadLetter.objects.filter(pk=row.pk).update(created_at=created_at)
    return row.pk


def _outbox(*, status: str, published_at: datetime | None) -> int:
    return OutboxMessage.objects.create(
        kind="event", exchange="events", routing_key="test.retention", body={}, status=status, published_at=published_at
    ).pk


def _job_run(*, status: str, finished_at: datetime | None) -> uuid.UUID:
    return JobRun.objects.create(
        job_name=f"old-{uuid.uuid4()}",
        status=status,
        started_at=timezone.now() - timedelta(days=100),
        finished_at=finished_at,
    ).pk


def test_retention_deletes_exactly_the_old_rows(db):
    from apps.ops.models import DeadLetter

    now = timezone.now()
    old, young = now - timedelta(days=31), now - timedelta(days=29)
    dl_old, dl_young = _dead_letter(old), _dead_letter(young)
    ob_old = _outbox(status="published", published_at=now - timedelta(days=8))
    ob_young = _outbox(status="published", published_at=now - timedelta(days=6))
    ob_pending_old = _outbox(status="pending", published_at=None)
    OutboxMessage.objects.filter(pk=ob_pending_old).update(created_at=now - timedelta(days=60))
    jr_old = _job_run(status="succeeded", finished_at=old)
    jr_failed_old = _job_run(status="failed", finished_at=old)
    jr_young = _job_run(status="succeeded", finished_at=young)
    jr_running = _job_run(status="running", finished_at=None)  # started 100 days ago, still running: kept
    OutboxMessage.objects.exclude(pk__in=[ob_old, ob_young, ob_pending_old]).delete()
    from django.contrib.auth import get_user_model

    from apps.context.models import IdempotencyKey
    from apps.eventbus.models import ProcessedEvent

    pe_old, pe_young = (
        ProcessedEvent.objects.create(subscriber="activity", event_id=uuid.uuid4(), event_type="x") for _ in range(2)
    )
    ProcessedEvent.objects.filter(pk=pe_old.pk).update(processed_at=now - timedelta(days=8))
    ProcessedEvent.objects.filter(pk=pe_young.pk).update(processed_at=now - timedelta(days=6))
    owner = get_user_model().objects.create_user(username="keys")
    ik_old, ik_young = (
        IdempotencyKey.objects.create(user=owner, key=k, scope="/x", request_hash="h") for k in ("old", "young")
    )
    IdempotencyKey.objects.filter(pk=ik_old.pk).update(created_at=now - timedelta(hours=25))

    run = job_execute(
        name="retention_purge",
        params={"dead_letter_days": 30, "outbox_days": 7, "job_run_days": 30, "processed_event_days": 7},
    )

    assert set(DeadLetter.objects.values_list("pk", flat=True)) == {dl_young}
    assert dl_old not in set(DeadLetter.objects.values_list("pk", flat=True))
    assert set(OutboxMessage.objects.values_list("pk", flat=True)) == {ob_young, ob_pending_old}
    remaining = set(JobRun.objects.values_list("pk", flat=True))
    assert {jr_young, jr_running, run.pk} <= remaining and not {jr_old, jr_failed_old} & remaining
    assert set(ProcessedEvent.objects.values_list("pk", flat=True)) == {pe_young.pk}
    assert set(IdempotencyKey.objects.values_list("pk", flat=True)) == {ik_young.pk}
    assert run.result == {
        "deleted_dead_letters": 1,
        "deleted_outbox": 1,
        "deleted_processed_events": 1,
        "deleted_idempotency_keys": 1,
        "deleted_job_runs": 2,
        "deleted_feedback": 0,
        "deleted_suggestions": 0,
        "deleted_inference_requests": 0,
        "deleted_embeddings": 0,
        "deleted_model_versions": 0,
        "deleted_canary_runs": 0,
    }
    assert run.progress_done == run.progress_total == 11


def _ai_rows(session: Session, user, *, now: datetime) -> dict[str, object]:
    """AI rows just past and just inside each default retention (7 / 30 / 90 / 30 days)."""
    import numpy as np

    from apps.ai.models import Embedding, InferenceRequest, Suggestion, SuggestionFeedback
    from apps.ai.services import embedding_store_many

    def request(status: str, finished_days: float | None) -> InferenceRequest:
        finished = now - timedelta(days=finished_days) if finished_days is not None else None
        return InferenceRequest.objects.create(
            session=session, kind="query", status=status, queued_at=now - timedelta(days=200), finished_at=finished
        )

    def suggestion(req: InferenceRequest, rank: int, days: float) -> Suggestion:
        made = Suggestion.objects.create(request=req, session=session, kind="query", rank=rank, content={"text": "t"})
        Suggestion.objects.filter(pk=made.pk).update(created_at=now - timedelta(days=days))
        return made

    def feedback(sug: Suggestion, days: float) -> SuggestionFeedback:
        given = SuggestionFeedback.objects.create(suggestion=sug, user=user, verdict="accept")
        SuggestionFeedback.objects.filter(pk=given.pk).update(updated_at=now - timedelta(days=days))
        return given

    rows: dict[str, object] = {
        "req_bare_old": request("done", 8),
        "req_failed_old": request("failed", 8),
        "req_bare_young": request("done", 6),
        "req_pending_ancient": request("pending", None),
        "req_running_ancient": request("running", None),
    }
    with_suggestions = request("done", 40)
    rows["req_with_suggestions"] = with_suggestions
    rows["sug_old"] = suggestion(with_suggestions, 0, 31)
    rows["sug_young"] = suggestion(with_suggestions, 1, 29)
    rows["sug_old_fb_young"] = suggestion(with_suggestions, 2, 100)
    rows["fb_young"] = feedback(rows["sug_old_fb_young"], 89)
    rows["sug_old_fb_old"] = suggestion(with_suggestions, 3, 100)
    rows["fb_old"] = feedback(rows["sug_old_fb_old"], 91)
    orphaned = request("done", 40)
    rows["req_orphaned"] = orphaned
    rows["sug_orphaning"] = suggestion(orphaned, 0, 31)
    embedding_store_many(model_name="m", vectors={"old": np.ones(4), "young": np.ones(4)})
    Embedding.objects.filter(content_hash="old").update(created_at=now - timedelta(days=31))
    Embedding.objects.filter(content_hash="young").update(created_at=now - timedelta(days=29))
    from apps.ai.models import ModelVersion

    for version, (days, promoted, once) in enumerate(
        [(31, False, False), (29, False, False), (100, True, True), (100, False, True)], start=1
    ):
        made = ModelVersion.objects.create(
            name="retention_test",
            version=version,
            artifact=b"x",
            promoted=promoted,
            promoted_at=now - timedelta(days=days) if once else None,
        )
        ModelVersion.objects.filter(pk=made.pk).update(created_at=now - timedelta(days=days))
    return rows


@pytest.mark.django_db(transaction=True)
def test_retention_purges_the_ai_tables_with_their_default_windows(session_factory, user, subprocess_env):
    # Given AI rows on both sides of each default window
    from apps.ai.models import Embedding, InferenceRequest, Suggestion, SuggestionFeedback
    from tests.conftest import REPO_ROOT

    rows = _ai_rows(session_factory(), user, now=timezone.now())

    # When the retention job runs as the platform runs it, with its defaults
    done = subprocess.run(
        [sys.executable, "manage.py", "run_job", "retention_purge", "--no-progress"],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    # Then exactly the rows past their windows are gone
    def ids(model) -> set:
        return set(model.objects.values_list("pk", flat=True))

    pk = {name: row.pk for name, row in rows.items()}
    assert ids(SuggestionFeedback) == {pk["fb_young"]}
    assert ids(Suggestion) == {pk["sug_young"], pk["sug_old_fb_young"]}
    assert ids(InferenceRequest) == {
        pk["req_bare_young"],
        pk["req_pending_ancient"],
        pk["req_running_ancient"],
        pk["req_with_suggestions"],
    }
    hashes = set(Embedding.objects.filter(content_hash__in=["old", "young"]).values_list("content_hash", flat=True))
    assert hashes == {"young"}
    from apps.ai.models import ModelVersion

    # Never promoted and 31 days old: gone; 29 days, promoted, once promoted: kept
    assert set(ModelVersion.objects.filter(name="retention_test").values_list("version", flat=True)) == {2, 3, 4}


def test_retention_deletes_canary_runs_past_their_default_window(db):
    # Given canary runs just past and just inside the default window (7 days), in every status
    from apps.ops.models import CanaryRun, CanaryStatus

    now = timezone.now()
    ages = {"old_ok": 7.5, "old_pending": 30, "young": 6.5, "new": 0}
    statuses = {"old_ok": CanaryStatus.SUCCEEDED, "old_pending": CanaryStatus.PENDING}
    runs = {}
    for name, days in ages.items():
        run = CanaryRun.objects.create(mode="ok", status=statuses.get(name, CanaryStatus.SUCCEEDED))
        CanaryRun.objects.filter(pk=run.pk).update(created_at=now - timedelta(days=days))
        runs[name] = run.pk

    # When the retention job runs with its defaults
    run = job_execute(name="retention_purge", params={})

    # Then only the runs older than RETENTION_CANARY_RUN_DAYS are gone
    assert set(CanaryRun.objects.values_list("pk", flat=True)) == {runs["young"], runs["new"]}
    assert run.result["deleted_canary_runs"] == 2


def test_retention_rejects_a_zero_day_window(db):
    from apps.common.exceptions import ValidationFailed

    with pytest.raises(ValidationFailed):
        job_execute(name="retention_purge", params={"outbox_days": 0, "dead_letter_days": 30})


def _at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def test_daily_rollup_counts_one_day(db, session_factory, user, other_user, make_user):
    from apps.ai.models import InferenceRequest, Suggestion, SuggestionFeedback
    from apps.context.services import participant_add

    day = date(2026, 3, 4)
    s1, s2 = session_factory(title="s1"), session_factory(title="s2", owner=other_user)
    participant_add(session=s1, actor=user, username=other_user.username, role="editor")
    context_event_append(session=s1, author=user, events=[EventInput("note", {"text": "a"}), EventInput("note", {})])
    context_event_append(session=s1, author=other_user, events=[EventInput("user_action", {"action": "share"})])
    context_event_append(session=s2, author=other_user, events=[EventInput("note", {"text": "x"})])
    ContextEvent.objects.update(created_at=_at(day, 10))
    # An event of the next day is not counted.
    late = context_event_append(session=s2, author=other_user, events=[EventInput("note", {"text": "y"})])[0]
    ContextEvent.objects.filter(pk=late.pk).update(created_at=_at(day + timedelta(days=1), 0))
    request = InferenceRequest.objects.create(session=s1, queued_at=timezone.now(), status="done")
    suggestions = [
        Suggestion.objects.create(request=request, session=s1, kind="next_action", rank=i, content={"action": "share"})
        for i in range(3)
    ]
    SuggestionFeedback.objects.create(suggestion=suggestions[0], user=user, verdict="accept")
    SuggestionFeedback.objects.create(suggestion=suggestions[1], user=other_user, verdict="accept")
    SuggestionFeedback.objects.create(suggestion=suggestions[2], user=user, verdict="reject")
    Suggestion.objects.update(created_at=_at(day, 11))
    SuggestionFeedback.objects.update(created_at=_at(day, 12))

    run = job_execute(name="daily_rollup", params={"day": day.isoformat(), "chunk_size": 1})

    rows = {r.session_id: r for r in DailySessionRollup.objects.filter(day=day)}
    assert set(rows) == {s1.id, s2.id}
    assert (
        rows[s1.id].events,
        rows[s1.id].participants,
        rows[s1.id].suggestions_shown,
        rows[s1.id].suggestions_accepted,
    ) == (3, 2, 3, 2)
    assert (rows[s2.id].events, rows[s2.id].participants, rows[s2.id].suggestions_shown) == (1, 1, 0)
    users = {r.user_id: r for r in DailyUserRollup.objects.filter(day=day)}
    assert (
        users[user.pk].events,
        users[user.pk].sessions,
        users[user.pk].suggestions_shown,
        users[user.pk].suggestions_accepted,
    ) == (2, 1, 3, 1)
    assert (
        users[other_user.pk].events,
        users[other_user.pk].sessions,
        users[other_user.pk].suggestions_shown,
        users[other_user.pk].suggestions_accepted,
    ) == (2, 2, 3, 1)
    assert run.result == {"sessions": 2, "users": 2}

    # Running it again recomputes the same rows instead of adding to them.
    job_execute(name="daily_rollup", params={"day": day.isoformat()})
    assert DailySessionRollup.objects.filter(day=day).count() == 2
    assert DailySessionRollup.objects.get(day=day, session=s1).events == 3


def test_daily_rollup_rejects_a_bad_day(db):
    from apps.common.exceptions import ValidationFailed

    with pytest.raises(ValidationFailed):
        job_execute(name="daily_rollup", params={"day": "2026-13-01"})
