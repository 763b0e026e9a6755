"""Replay of a subscriber's dead letters (``events.<name>.dlq`` back into ``events.<name>``).

For after the cause is fixed (a subscriber bug, a missing row). Each message
is republished with a publisher confirm before it is acked off the DLQ, so a
crash in between duplicates rather than loses it; the subscriber applies each
``event_id`` once anyway, so replaying twice is harmless.

When the dead-letter archiver runs, it drains ``events.<name>.dlq`` into
``DeadLetter`` rows (queue ``events.<name>``); those are replayed through
``apps.ops.services.dead_letter_replay`` (audited, once per row unless forced),
which republishes to the subscriber's queue the same way.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from kombu import Connection, Producer, Queue

from apps.common.exceptions import ValidationFailed
from apps.eventbus.subscribers import registered_subscribers

logger = logging.getLogger("apps.eventbus.deadletters")

_DEATH_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
)


def event_archived_dead_letters_replay(
    *, subscriber: str, limit: int = 100, user: Any | None = None, force: bool = False
) -> dict[str, Any]:
    """Replay the archived (``DeadLetter``) dead letters of ``subscriber``; ``dead_letter_replay_bulk``'s result."""
    from apps.ops.selectors import dead_letter_list
    from apps.ops.services import dead_letter_replay_bulk

    _check_subscriber(subscriber)
    return dead_letter_replay_bulk(
        queryset=dead_letter_list(filters={"queue": f"events.{subscriber}"}), user=user, force=force, limit=limit
    )


def _check_subscriber(subscriber: str) -> None:
    names = {cls.name for cls in registered_subscribers()}
    if subscriber not in names:
        raise ValidationFailed("Unknown subscriber.", details={"subscriber": subscriber, "known": sorted(names)})


def event_dead_letters_replay(*, subscriber: str, limit: int | None = None, broker_url: str | None = None) -> int:
    """Move up to ``limit`` dead letters of ``subscriber`` back to its queue. Returns how many moved."""
    _check_subscriber(subscriber)
    queue_name = f"events.{subscriber}"
    moved = 0
    with Connection(broker_url or settings.BROKER_URL, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        dlq = Queue(f"{queue_name}.dlq", no_declare=True)(channel)
        producer = Producer(conn.channel())
        while limit is None or moved < limit:
            message = dlq.get(no_ack=False)
            if message is None:
                break
            headers = {k: v for k, v in (message.headers or {}).items() if k not in _DEATH_HEADERS}
            headers["ce_replays"] = int(headers.get("ce_replays", 0)) + 1
            properties = message.properties
            producer.publish(
                message.body,
                exchange="",
                routing_key=queue_name,
                headers=headers,
                content_type=message.content_type or "application/json",
                content_encoding=message.content_encoding or "utf-8",
                delivery_mode=2,
                message_id=properties.get("message_id"),
                correlation_id=properties.get("correlation_id"),
                type=properties.get("type"),
                retry=False,
            )
            message.ack()
            moved += 1
    logger.info("event dead letters replayed", extra={"subscriber": subscriber, "moved": moved})
    return moved
