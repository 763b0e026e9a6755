"""Drains every ``*.dlq`` into ``DeadLetter`` rows; a plain kombu consumer, not a Celery worker.

Every ``*.dlq``: the work queues' (``ai.realtime.dlq``, ...) and the event
subscribers' (``events.<subscriber>.dlq`` for each registered subscriber,
declared here so they exist before the subscriber process first ran).

(A Celery worker would run the dead task again.) Each message is acked only
after its row is committed; a redelivered message maps onto the same row
(``DeadLetter.message_key``), so a crash between commit and ack duplicates
nothing. A database error leaves the message unacked and requeued, and the
archiver backs off.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from kombu import Connection, Message
from kombu import Queue as KombuQueue
from kombu.mixins import ConsumerMixin

from apps.common.exceptions import ValidationFailed
from apps.common.metrics import DEAD_LETTERS_ARCHIVED
from apps.eventbus.amqp_io import FAILOVER_STRATEGY, BrokerHosts
from apps.eventbus.queues import DEAD_LETTER_QUEUES, dead_letter_queue, declare_topology, subscriber_queue_name
from apps.eventbus.subscribers import registered_subscribers
from apps.ops.deadletters.selectors import dead_letter_list
from apps.ops.deadletters.services import dead_letter_archive, dead_letter_replay_bulk

logger = logging.getLogger(__name__)

# Messages in hand per channel: rows are written one by one, so a small window
# keeps throughput without holding many unacked messages.
ARCHIVER_PREFETCH = 20


class DeadLetterArchiver(ConsumerMixin):
    def __init__(
        self,
        connection: Connection,
        *,
        queues: list[KombuQueue] | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.connection = connection
        self.queues = queues or archived_queues()
        self.stop_event = stop_event or threading.Event()
        self.archived = 0
        self.db_failures = 0

    def get_consumers(self, consumer_cls: Any, channel: Any) -> list:
        declare_topology(channel)
        # on_message gets the raw message: a body that does not decode is
        # archived as it is, never stuck unacked in front of the queue.
        consumer = consumer_cls(
            queues=self.queues, on_message=self.on_message, no_ack=False, prefetch_count=ARCHIVER_PREFETCH
        )
        return [consumer]

    def on_connection_revived(self) -> None:
        logger.info("archiver connected", extra={"queues": [q.name for q in self.queues]})

    def on_consume_ready(self, connection: Any, channel: Any, consumers: list, **kwargs: Any) -> None:
        # After every queue is declared and consumed: what a caller waits for.
        logger.info("archiver consuming", extra={"queues": [q.name for q in self.queues]})

    def on_iteration(self) -> None:
        if self.stop_event.is_set():
            self.should_stop = True

    def on_message(self, message: Message) -> None:
        dlq = (message.delivery_info or {}).get("routing_key") or ""
        queue_name = _dlq_name(message, dlq)
        try:
            close_old_connections()
            _archive(message, queue_name)
        except Exception:  # keep the message; try again after a pause
            self.db_failures += 1
            logger.exception("could not archive a dead letter; requeued", extra={"queue": queue_name})
            message.requeue()
            time.sleep(min(5.0, 0.2 * self.db_failures))
            return
        self.db_failures = 0
        message.ack()
        self.archived += 1


def _archive(message: Message, dead_letter_queue_name: str) -> None:
    """One dead-lettered message into its ``DeadLetter`` row (the same row when it was archived before)."""
    dead_letter, created = dead_letter_archive(
        dead_letter_queue=dead_letter_queue_name,
        body=message.body,
        headers=message.headers,
        properties=dict(message.properties),
    )
    if created:  # a redelivered message maps onto its row: counted once
        DEAD_LETTERS_ARCHIVED.labels(queue=dead_letter.queue, reason=dead_letter.reason).inc()
    logger.info(
        "dead letter archived" if created else "dead letter already archived",
        extra={
            "dead_letter_id": str(dead_letter.id),
            "queue": dead_letter.queue,
            "task": dead_letter.task_name,
            "reason": dead_letter.reason,
        },
    )


def dead_letter_queue_drain(*, queue: str, limit: int | None = None, broker_url: str | None = None) -> int:
    """Archive what ``<queue>.dlq`` holds now, as the running archiver would, without waiting for more.

    Each message is acked after its row commits. Returns how many were archived.
    """
    archived = 0
    with BrokerHosts(broker_url or settings.BROKER_URL).connect() as conn:
        dlq = dead_letter_queue(queue)(conn.channel())
        dlq.declare()
        while limit is None or archived < limit:
            message = dlq.get(no_ack=False)
            if message is None:
                break
            _archive(message, dlq.name)
            message.ack()
            archived += 1
    return archived


def subscriber_dead_letters_replay(
    *, subscriber: str, limit: int = 1000, user: Any | None = None, force: bool = False
) -> dict[str, Any]:
    """A subscriber's dead letters back into ``events.<subscriber>``, audited, once the cause is fixed.

    What waits in ``events.<subscriber>.dlq`` is archived first, so every
    replay goes through ``dead_letter_replay`` (a ``DeadLetterReplay`` row per
    message, once per row unless ``force``). Returns ``dead_letter_replay_bulk``'s
    result with ``archived``: how many messages were taken off the DLQ.
    """
    names = {cls.name for cls in registered_subscribers()}
    if subscriber not in names:
        raise ValidationFailed("Unknown subscriber.", details={"subscriber": subscriber, "known": sorted(names)})
    queue = subscriber_queue_name(subscriber)
    archived = dead_letter_queue_drain(queue=queue, limit=limit)
    result = dead_letter_replay_bulk(
        queryset=dead_letter_list(filters={"queue": queue}), user=user, force=force, limit=limit
    )
    return {**result, "archived": archived}


def archived_queues() -> list[KombuQueue]:
    """The work queues' DLQs and ``events.<name>.dlq`` of every registered subscriber."""
    names = sorted({cls.name for cls in registered_subscribers()})
    return [*DEAD_LETTER_QUEUES, *(dead_letter_queue(subscriber_queue_name(name)) for name in names)]


def _dlq_name(message: Message, routing_key: str) -> str:
    # A DLQ message is routed on ``dlx`` with its original queue as the key.
    return f"{routing_key}.dlq" if routing_key and not routing_key.endswith(".dlq") else routing_key


def run_archiver(*, broker_url: str, stop_event: threading.Event | None = None) -> None:
    """Run until ``stop_event`` is set (or forever); reconnects by itself after a broker restart.

    A failover ``broker_url`` (``;``-separated hosts) is kombu's own: ConsumerMixin
    reconnects through ``ensure_connection`` on a clone of this connection, which
    keeps the alternates and moves to the next host after each failed attempt.
    """
    with Connection(broker_url, heartbeat=30, failover_strategy=FAILOVER_STRATEGY) as connection:
        DeadLetterArchiver(connection, stop_event=stop_event).run()
