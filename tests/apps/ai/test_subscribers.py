"""The ``ai_trigger`` subscriber, applied in-process through the runner's apply step."""

from __future__ import annotations

import pytest
from django.utils import timezone

from apps.ai.subscribers import AiTriggerSubscriber
from apps.eventbus.contracts import Event, event_build
from apps.eventbus.subscribers.runner import subscriber_apply

pytestmark = pytest.mark.django_db


def _event(event_type: str, session_id, data: dict, user_id: int | None = None) -> Event:
    return event_build(
        event_type=event_type, session_id=session_id, user_id=user_id, data=data, occurred_at=timezone.now()
    )


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
