"""The ``activity`` subscriber, applied in-process through the runner's apply step (dedupe + one transaction)."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from apps.batch.models import SessionActivity
from apps.batch.subscribers import ActivitySubscriber
from apps.eventbus.contracts import Event, event_build
from apps.eventbus.models import ProcessedEvent
from apps.eventbus.subscribers.runner import subscriber_apply

pytestmark = pytest.mark.django_db


def _event(event_type: str, session_id, data: dict, user_id: int | None = None) -> Event:
    return event_build(
        event_type=event_type, session_id=session_id, user_id=user_id, data=data, occurred_at=timezone.now()
    )


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
