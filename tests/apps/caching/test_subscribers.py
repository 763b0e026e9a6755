"""The ``cache_invalidation`` subscriber, applied in-process through the runner's apply step."""

from __future__ import annotations

import pytest
from django.utils import timezone

from apps.caching.subscribers import CacheInvalidationSubscriber
from apps.eventbus.contracts import Event, event_build
from apps.eventbus.subscribers.runner import subscriber_apply

pytestmark = pytest.mark.django_db


def _event(event_type: str, session_id, data: dict, user_id: int | None = None) -> Event:
    return event_build(
        event_type=event_type, session_id=session_id, user_id=user_id, data=data, occurred_at=timezone.now()
    )


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
