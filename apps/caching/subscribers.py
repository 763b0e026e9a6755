"""``cache_invalidation``: session, participant and context events drop the cached views they change.

Calls ``apps.caching.services.cache_invalidate_tags`` inside the subscriber's
transaction: if the invalidation fails, the transaction rolls back and the
event is retried; an invalidation whose transaction then fails only costs a
cache miss. The context services already invalidate after their own commit;
this is the backstop for every process and every writer, at event lag.
Tags: ``ctx.session:<id>`` and ``ctx.participants:<id>`` (apps.caching.keys).
"""

from __future__ import annotations

from collections.abc import Sequence

from apps.caching.keys import participants_cache_tag, session_cache_tag
from apps.caching.services import cache_invalidate_tags
from apps.eventbus import contracts
from apps.eventbus.contracts import Event
from apps.eventbus.subscribers import Subscriber, subscriber_register


def tags_for(event: Event) -> set[str]:
    """The session view tags this event makes stale (``apps.caching.keys``)."""
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


@subscriber_register
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
        cache_invalidate_tags(tags=sorted(tags))
