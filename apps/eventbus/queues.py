"""The RabbitMQ topology, declared in one place.

Exchanges: ``tasks`` (topic: Celery's native delayed delivery, which countdown
retries need on quorum queues, refuses direct exchanges), ``events`` (topic,
domain events), ``dlx`` (direct, dead letters). Every work queue is a durable
quorum queue that dead-letters at least once into ``<queue>.dlq``.
"""

from __future__ import annotations

from enum import StrEnum

from kombu import Exchange
from kombu import Queue as KombuQueue


class Queue(StrEnum):
    AI_REALTIME = "ai.realtime"
    AI_BATCH = "ai.batch"
    AI_TRAINING = "ai.training"
    MAINTENANCE = "maintenance"

    @property
    def dlq(self) -> str:
        return dead_letter_queue_name(self.value)


TASKS_EXCHANGE = Exchange("tasks", type="topic", durable=True)
EVENTS_EXCHANGE = Exchange("events", type="topic", durable=True)
DLX_EXCHANGE = Exchange("dlx", type="direct", durable=True)

# The broker's backstop for crash loops: a message redelivered this many times
# (worker killed each time) is dead-lettered instead of looping forever.
# Ordinary failures never get here; the task base class enforces its own
# attempt budget carried in the message headers.
DELIVERY_LIMIT = 5

# Prefetch multiplier per queue (messages held per pool process). With
# acks_late a prefetched message waits unacked behind the running one, so:
# - ai.realtime: 4. Short inference tasks on a thread pool; a few in hand feed
#   the micro-batcher and hide the broker round trip.
# - ai.batch, maintenance, ai.training: 1. Long tasks: a prefetched message
#   would wait behind a long one while another worker idles (unfair), and its
#   unacked time counts against RabbitMQ's 30 min consumer timeout.
PREFETCH_MULTIPLIER: dict[str, int] = {
    "ai.realtime": 4,
    "ai.batch": 1,
    "ai.training": 1,
    "maintenance": 1,
}

# Task-name prefixes to queues, for routing a task the publisher has not
# imported (the first match wins; a task's declared queue takes precedence).
TASK_NAME_ROUTES: tuple[tuple[str, str], ...] = (
    ("ai.train", "ai.training"),
    ("ai.evaluate", "ai.training"),
    ("training.", "ai.training"),
    ("ai.batch", "ai.batch"),
    ("ai.backfill", "ai.batch"),
    ("batch.", "ai.batch"),
    ("ai.", "ai.realtime"),
    ("ops.", "maintenance"),
    ("maintenance.", "maintenance"),
)


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dlq"


def queue_for_task_name(name: str) -> Queue:
    """The work queue of a task by its stable name's prefix (``ai.batch`` when none matches)."""
    for prefix, queue in TASK_NAME_ROUTES:
        if name.startswith(prefix):
            return Queue(queue)
    return Queue.AI_BATCH


def quorum_arguments(queue: str, *, delivery_limit: int = DELIVERY_LIMIT) -> dict[str, object]:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DLX_EXCHANGE.name,
        "x-dead-letter-routing-key": queue,
        "x-delivery-limit": delivery_limit,
        # At-least-once dead-lettering: the message leaves the source queue only
        # once the DLQ has confirmed it. It requires reject-publish overflow.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def dead_letter_queue(queue: str) -> KombuQueue:
    return KombuQueue(
        dead_letter_queue_name(queue),
        exchange=DLX_EXCHANGE,
        routing_key=queue,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def work_queue(queue: Queue) -> KombuQueue:
    return KombuQueue(
        queue.value,
        exchange=TASKS_EXCHANGE,
        routing_key=queue.value,
        durable=True,
        queue_arguments=quorum_arguments(queue.value),
    )


SUBSCRIBER_QUEUE_PREFIX = "events."


def subscriber_queue_name(subscriber: str) -> str:
    return f"{SUBSCRIBER_QUEUE_PREFIX}{subscriber}"


def subscriber_queue(subscriber: str, patterns: list[str]) -> KombuQueue:
    """``events.<subscriber>`` bound on ``events`` by routing-key patterns, dead-lettered like work queues."""
    name = subscriber_queue_name(subscriber)
    from kombu import binding

    return KombuQueue(
        name,
        bindings=[binding(EVENTS_EXCHANGE, routing_key=pattern) for pattern in patterns],
        durable=True,
        queue_arguments=quorum_arguments(name),
    )


WORK_QUEUES: list[KombuQueue] = [work_queue(q) for q in Queue]
DEAD_LETTER_QUEUES: list[KombuQueue] = [dead_letter_queue(q.value) for q in Queue]


def declare_topology(channel) -> None:  # noqa: ANN001 - a kombu/amqp channel
    """Declare exchanges, work queues and their DLQs (idempotent)."""
    for exchange in (TASKS_EXCHANGE, EVENTS_EXCHANGE, DLX_EXCHANGE):
        exchange(channel).declare()
    for queue in WORK_QUEUES + DEAD_LETTER_QUEUES:
        queue(channel).declare()
