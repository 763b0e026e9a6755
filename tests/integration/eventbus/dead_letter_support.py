"""A subscriber whose failure an operator can fix: it refuses ``poison`` events while a Redis flag is set."""

from __future__ import annotations

import redis
from django.conf import settings

from apps.eventbus import contracts
from apps.eventbus.contracts import Event
from apps.eventbus.subscribers.base import Subscriber

FLAKY_PATH = "tests.integration.eventbus.dead_letter_support.FlakySubscriber"

_client: redis.Redis | None = None


def broken_flag_key() -> str:
    return f"{settings.REDIS_KEY_PREFIX}:test_flaky:broken"


def applied_key(event_id: str) -> str:
    """How many times the handler ran to completion for ``event_id`` (outside the runner's dedupe)."""
    return f"{settings.REDIS_KEY_PREFIX}:test_flaky:applied:{event_id}"


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL)
    return _client


class FlakySubscriber(Subscriber):
    name = "test_flaky"
    patterns = (contracts.CONTEXT_UPDATED,)
    batch_size = 10

    def handle(self, event: Event) -> None:
        if event.data["data"].get("poison") and _redis().exists(broken_flag_key()):
            raise ValueError(f"broken flag set: refusing event seq={event.data['seq']}")
        _redis().incr(applied_key(str(event.event_id)))
