"""Task messages on the wire: header names, the payload cap and the Celery protocol 2 message builder.

Every header the platform sets is named here once; the task base class
(``workers/base.py``), the outbox relay, dead-letter replay and the fleet
readers all use these constants. Publishing a task message without Celery
(the outbox relay, with confirms)::

    msg = build_task_message("ai.generate_suggestions", {"request_id": rid}, correlation_id=cid)
    publisher.publish(msg.body, exchange=msg.exchange, routing_key=msg.routing_key,
                      headers=msg.headers, **msg.properties)

``msg.body`` is the JSON text of Celery protocol 2 ``[args, kwargs, embed]``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from celery import current_app

from apps.common.logging import new_correlation_id
from apps.eventbus.publisher import OutgoingMessage
from apps.eventbus.queues import SUBSCRIBER_QUEUE_PREFIX, TASKS_EXCHANGE, Queue, queue_for_task_name

HEADER_CORRELATION_ID = "ce_correlation_id"
HEADER_ATTEMPT = "ce_attempt"
# Set on a message published by a dead-letter replay: the DeadLetterReplay id.
HEADER_REPLAY_ID = "ce_replay_id"

# Task payload cap (JSON of args + kwargs); larger payloads are dead-lettered
# unrun, and build_task_message refuses to produce them.
TASK_PAYLOAD_MAX_BYTES = 256 * 1024
# When the work was asked for (epoch seconds): the fleet figures measure queue
# wait and oldest-message age from it (apps/ops/fleet/figures.py).
HEADER_PUBLISHED_AT = "published_at"
# The replay ids a dead letter has been through, comma-separated.
HEADER_REPLAYS = "ce_replays"
# RabbitMQ's own: crash redeliveries on a quorum queue, and the dead-letter history.
HEADER_DELIVERY_COUNT = "x-delivery-count"
HEADER_DEATH = "x-death"
# Every header RabbitMQ adds on dead-lettering or redelivery: a republished message starts without them.
BROKER_DEATH_HEADERS = frozenset(
    {
        HEADER_DEATH,
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        HEADER_DELIVERY_COUNT,
    }
)


def is_event_queue(queue: str) -> bool:
    """A subscriber's queue (``events.<name>``), not its DLQ."""
    return queue.startswith(SUBSCRIBER_QUEUE_PREFIX) and not queue.endswith(".dlq")


# AMQP heartbeat of the platform's own long-lived connections (relay, subscriber
# runner), seconds: a dead peer or a black-holed network is noticed within about
# two intervals instead of never (heartbeat 0), and the broker drops our side likewise.
BROKER_HEARTBEAT_S = 30

# What the hooks (apps/eventbus/hooks.py) are told: a replay's end, a dead letter's reason.
REPLAY_SUCCEEDED = "succeeded"
REASON_REJECTED = "rejected"
REASON_RETRIES_EXHAUSTED = "retries_exhausted"


def event_failure_key(*, queue: str, event_id: str) -> str:
    """The failure record's key for an event a subscriber refused: one event may fail in several subscribers."""
    return f"{queue}:{event_id}"[:200]


class PayloadTooLargeError(Exception):
    """A task payload over ``TASK_PAYLOAD_MAX_BYTES``."""


@dataclass(frozen=True)
class TaskMessage:
    body: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    exchange: str
    routing_key: str
    queue: str
    task_id: str

    def outgoing(self) -> OutgoingMessage:
        """This message as the confirm-mode publisher takes it."""
        return OutgoingMessage(
            body=self.body,
            exchange=self.exchange,
            routing_key=self.routing_key,
            headers=self.headers,
            properties=self.properties,
        )


def build_task_message(
    task_name: str,
    kwargs: dict[str, Any],
    *,
    correlation_id: str | None,
    task_id: str | None = None,
    queue: Queue | str | None = None,
    extra_headers: dict[str, Any] | None = None,
) -> TaskMessage:
    """A Celery protocol 2 task message ready for ``kombu.Producer.publish`` (see the module docstring)."""
    # The configured app (project/celery.py, loaded by the ``project`` package).
    app = current_app
    task_id = task_id or str(uuid.uuid4())
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    if len(body) > TASK_PAYLOAD_MAX_BYTES:
        raise PayloadTooLargeError(f"task payload is {len(body)} bytes, over the {TASK_PAYLOAD_MAX_BYTES} byte limit")
    registered = app.tasks.get(task_name)
    target = Queue(queue) if queue else Queue(getattr(registered, "queue", None) or queue_for_task_name(task_name))
    message = app.amqp.as_task_v2(task_id, task_name, args=(), kwargs=kwargs)
    headers = dict(message.headers)
    headers.update({HEADER_CORRELATION_ID: correlation_id or new_correlation_id(), HEADER_ATTEMPT: 1})
    # When the work was asked for (the outbox row's transaction): the ops fleet
    # figures measure queue wait and oldest-message age from it (apps/ops/fleet/figures.py).
    headers[HEADER_PUBLISHED_AT] = time.time()
    headers.update(extra_headers or {})
    properties = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "correlation_id": task_id,
        "message_id": task_id,
    }
    return TaskMessage(
        body=body,
        headers=headers,
        properties=properties,
        exchange=TASKS_EXCHANGE.name,
        routing_key=target.value,
        queue=target.value,
        task_id=task_id,
    )
