"""Subscribers applied in-process through the runner's apply step (dedupe + one transaction)."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from apps.ai.subscribers import AiTriggerSubscriber
from apps.batch.subscribers import ActivitySubscriber
from apps.caching.subscribers import CacheInvalidationSubscriber
from apps.eventbus.contracts import Event, event_build
from apps.eventbus.models import ProcessedEvent, SessionActivity
from apps.eventbus.subscribers import registered_subscribers
from apps.eventbus.subscribers.runner import subscriber_apply

pytestmark = pytest.mark.django_db


def _event(event_type: str, session_id, data: dict, user_id: int | None = None) -> Event:
    return event_build(
        event_type=event_type, session_id=session_id, user_id=user_id, data=data, occurred_at=timezone.now()
    )


def test_the_platform_subscribers_are_registered():
    assert [cls.name for cls in registered_subscribers()] == ["activity", "ai_trigger", "cache_invalidation"]


def test_activity_counts_each_event_once_even_when_redelivered():
    sid = uuid.uuid4()
    events = [
        _event("session.created", sid, {"title": "t"}),
        _event("participant.joined", sid, {"participant_user_id": 2, "username": "b", "role": "viewer"}),
        _event("context.updated", sid, {"seq": 1, "event_type": "context_update", "data": {}}),
        _event("suggestion.generated", sid, {"suggestion_ids": ["a", "b", "c"]}),
        _event("suggestion.feedback", sid, {"suggestion_id": "a", "accepted": True}),
        _event("suggestion.feedback", sid, {"suggestion_id": "b", "accepted": False}),
        _event("participant.left", sid, {"participant_user_id": 2, "username": "b"}),
    ]
    sub = ActivitySubscriber()
    assert subscriber_apply(subscriber=sub, events=events[:4] + events[:2]) == 4  # repeats inside a batch
    assert subscriber_apply(subscriber=sub, events=events) == 3  # a redelivery of the first four is dropped
    assert subscriber_apply(subscriber=sub, events=events) == 0
    a = SessionActivity.objects.get(session_id=sid)
    assert a.events_total == 7
    assert a.events_by_type == {
        "session.created": 1,
        "participant.joined": 1,
        "context.updated": 1,
        "suggestion.generated": 1,
        "suggestion.feedback": 2,
        "participant.left": 1,
    }
    assert (a.participants_joined, a.participants_left, a.participants_active) == (2, 1, 1)
    assert (a.suggestions_generated, a.suggestions_accepted, a.suggestions_rejected) == (3, 1, 1)
    assert ProcessedEvent.objects.filter(subscriber="activity").count() == 7


def test_a_failing_handler_rolls_back_its_dedupe_record():
    class Exploding(ActivitySubscriber):
        name = "exploding"

        def handle_batch(self, events):
            super().handle_batch(events)
            raise RuntimeError("boom")

    sid = uuid.uuid4()
    with pytest.raises(RuntimeError):
        subscriber_apply(subscriber=Exploding(), events=[_event("session.closed", sid, {})])
    assert not ProcessedEvent.objects.exists() and not SessionActivity.objects.exists()


def test_ai_trigger_asks_once_per_session_for_the_latest_update(session_factory, user):
    from apps.ai.models import InferenceRequest

    session = session_factory()
    events = [
        _event(
            "context.updated",
            session.id,
            {"seq": s, "event_type": "context_update", "data": {"text": "x"}},
            user_id=user.pk,
        )
        for s in (1, 2, 3)
    ] + [_event("context.updated", session.id, {"seq": 4, "event_type": "note", "data": {}}, user_id=user.pk)]
    subscriber_apply(subscriber=AiTriggerSubscriber(), events=events)
    requests = list(InferenceRequest.objects.filter(session_id=session.id))
    assert len(requests) == 1 and requests[0].trigger_seq == 3
    subscriber_apply(subscriber=AiTriggerSubscriber(), events=events)  # redelivery: nothing new
    assert InferenceRequest.objects.filter(session_id=session.id).count() == 1


def test_ai_trigger_asks_for_next_actions_on_a_user_action(session_factory, user):
    from apps.ai.models import InferenceRequest

    session = session_factory()
    action = _event(
        "user.action", session.id, {"seq": 7, "action": "open_doc", "data": {"action": "open_doc"}}, user_id=user.pk
    )
    subscriber_apply(subscriber=AiTriggerSubscriber(), events=[action])
    requests = list(InferenceRequest.objects.filter(session_id=session.id))
    assert len(requests) == 1 and requests[0].trigger_seq == 7


def test_cache_invalidation_drops_the_sessions_cached_views(session_factory):
    from apps.caching.cache import get_or_load
    from apps.caching.keys import session_cache_tag

    session = session_factory()
    loads = []

    def loader():
        loads.append(1)
        return {"n": len(loads)}

    key = f"test.eventbus.snapshot:{session.id}"
    assert get_or_load(key, loader, ttl=60, tags=[session_cache_tag(session.id)]) == {"n": 1}
    assert get_or_load(key, loader, ttl=60, tags=[session_cache_tag(session.id)]) == {"n": 1}
    subscriber_apply(
        subscriber=CacheInvalidationSubscriber(),
        events=[_event("context.updated", session.id, {"seq": 1, "event_type": "note", "data": {}})],
    )
    assert get_or_load(key, loader, ttl=60, tags=[session_cache_tag(session.id)]) == {"n": 2}
