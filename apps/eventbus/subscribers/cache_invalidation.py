"""``cache_invalidation``: session, participant and context events drop the cached views they change.

Calls ``apps.caching.services.cache_invalidate_tags`` inside the subscriber's
transaction: if the invalidation fails, the transaction rolls back and the
event is retried; an invalidation whose transaction then fails only costs a
cache miss. The context services already invalidate after their own commit;
this is the backstop for every process and every writer, at event lag.
Tags: ``ctx.session:<id>`` and ``ctx.participants:<id>`` (apps.context.selectors).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from apps.eventbus import contracts
from apps.eventbus.contracts import Event
from apps.eventbus.subscribers.base import Subscriber

logger = logging.getLogger("apps.eventbus.subscribers")


def tags_for(event: Event) -> set[str]:
    """The context app's cache tags this event makes stale (its selectors own the tag names)."""
    from apps.context.selectors import participants_cache_tag, session_cache_tag

    if event.session_id is None:
        return set()
    tags = {session_cache_tag(event.session_id)}
    if event.event_type in (
        contracts.PARTICIPANT_JOINED,
        contracts.PARTICIPANT_LEFT,
        contracts.SESSION_CREATED,
        contracts.SESSION_CLOSED,
    ):
        tags.add(participants_cache_tag(event.session_id))
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
