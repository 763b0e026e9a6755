"""``cache_invalidation``: session, participant and context events drop the cached views they change.

Calls ``apps.caching.services.cache_invalidate_tags`` inside the subscriber's
transaction: if the invalidation fails, the transaction rolls back and the
event is retried; an invalidation whose transaction then fails only costs a
cache miss. Tags: ``session:<id>`` (snapshot, detail, participants) and
``user-sessions:<user id>`` (a user's session list).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from apps.eventbus import contracts
from apps.eventbus.contracts import Event
from apps.eventbus.subscribers.base import Subscriber

logger = logging.getLogger("apps.eventbus.subscribers")


def session_tag(session_id: object) -> str:
    return f"session:{session_id}"


def user_sessions_tag(user_id: object) -> str:
    return f"user-sessions:{user_id}"


def tags_for(event: Event) -> set[str]:
    if event.session_id is None:
        return set()
    tags = {session_tag(event.session_id)}
    if event.event_type in (contracts.PARTICIPANT_JOINED, contracts.PARTICIPANT_LEFT):
        tags.add(user_sessions_tag(event.data["participant_user_id"]))
    elif event.event_type in (contracts.SESSION_CREATED, contracts.SESSION_CLOSED) and event.user_id is not None:
        tags.add(user_sessions_tag(event.user_id))
    return tags


class CacheInvalidationSubscriber(Subscriber):
    name = "cache_invalidation"
    patterns = ("session.*", "participant.*", contracts.CONTEXT_UPDATED, contracts.USER_ACTION)

    def handle(self, event: Event) -> None:
        self.handle_batch([event])

    def handle_batch(self, events: Sequence[Event]) -> None:
        tags: set[str] = set()
        for event in events:
            tags |= tags_for(event)
        if not tags:
            return
        try:
            from apps.caching.services import cache_invalidate_tags
        except ImportError:
            logger.info("cache_invalidation: apps.caching.services.cache_invalidate_tags not available yet; skipped")
            return
        cache_invalidate_tags(tags=sorted(tags))
