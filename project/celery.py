"""The Celery application: settings that lose nothing. Topology lives in apps/eventbus/queues.py.

Declaring a task: see ``workers/base.py`` (``@task(name=..., queue=...)``).
Publishing from outside Celery (the outbox relay): ``apps.eventbus.messages.build_task_message``.

Why each setting (https://docs.celeryq.dev/en/stable/userguide/configuration.html):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acked only
  after its task finished; a worker killed mid-task returns it to the queue,
  where the quorum queue's ``x-delivery-limit`` stops crash loops.
- ``task_acks_on_failure_or_timeout = False``: a failure that escapes the base
  class (or a hard time limit) rejects the message without requeue, so RabbitMQ
  dead-letters it instead of Celery acking it away.
- ``broker_failover_strategy``: a failover ``BROKER_URL`` (``;``-separated
  nodes of one cluster) is tried in its order, round-robin.
- ``confirm_publish``: ``apply_async`` returns only once the broker has the
  message (publisher confirms).
- JSON only, results ignored: outcomes live in our own tables.
- Time limits stay below RabbitMQ's consumer timeout (30 min by default), which
  would otherwise close the channel under a long task.
- ``worker_consumer``: Celery's consumer acks undecodable messages; ours
  rejects them so they reach the dead-letter queue (workers/deadletter/consumer.py).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from project import env

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.dev")

# Imported for its before_task_publish hook: every message published by this
# process (web, relay, beat) carries the correlation id and attempt headers.
import workers.base  # noqa: F401
from apps.eventbus.queues import (  # after the settings module is chosen
    PREFETCH_MULTIPLIER,
    TASKS_EXCHANGE,
    WORK_QUEUES,
    Queue,
    queue_for_task_name,
)

app = Celery("context_engine")
app.config_from_object("django.conf:settings", namespace="CELERY")

# Seconds. Soft limit raises SoftTimeLimitExceeded inside the task (a failure it
# may classify); the hard limit kills the child. 25 min < RabbitMQ's 30 min.
TASK_SOFT_TIME_LIMIT = env.get_int("CELERY_TASK_SOFT_TIME_LIMIT", 20 * 60)
TASK_TIME_LIMIT = env.get_int("CELERY_TASK_TIME_LIMIT", 25 * 60)


def route_task(name: str, args: Any, kwargs: Any, options: dict, task: Any = None, **kw: Any) -> dict:
    """Route by stable task name: a task's declared queue, else the name's prefix."""
    queue = getattr(task, "queue", None) if task is not None else None
    if not queue:
        registered = app.tasks.get(name)
        queue = getattr(registered, "queue", None)
    target = Queue(queue) if queue in set(Queue) else queue_for_task_name(name)
    return {
        "queue": target.value,
        "exchange": TASKS_EXCHANGE.name,
        "exchange_type": "topic",
        "routing_key": target.value,
    }


app.conf.update(
    task_queues=WORK_QUEUES,
    task_default_queue=Queue.AI_BATCH.value,
    task_default_exchange=TASKS_EXCHANGE.name,
    task_default_exchange_type="topic",
    task_default_routing_key=Queue.AI_BATCH.value,
    task_create_missing_queues=False,
    task_routes=(route_task,),
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_acks_on_failure_or_timeout=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_store_errors_even_if_ignored=False,
    task_soft_time_limit=TASK_SOFT_TIME_LIMIT,
    task_time_limit=TASK_TIME_LIMIT,
    task_protocol=2,
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    # Keep reconnecting forever: a broker restart must not end the worker.
    broker_connection_max_retries=None,
    # BROKER_URL may list a cluster's nodes (``amqp://h1//;amqp://h2//;...``): kombu
    # moves to the next after each failed connection attempt, in the listed order
    # (shuffle would not spread load: kombu never shuffles the first host).
    broker_failover_strategy="round-robin",
    # 10 s: a worker whose broker went silent (a black-holed path) notices within about 20 s
    # (the loop's own check, or workers/deadletter/watchdog.py where the loop has none).
    broker_heartbeat=10,
    # A channel error on (re)connecting is retried, not fatal: after a partition the broker
    # still holds the old connection's exclusive pidbox queue until it times that connection
    # out (RESOURCE_LOCKED), and the worker used to exit on it.
    broker_channel_error_retry=True,
    # Quorum queues have no global QoS; Celery then applies prefetch per
    # consumer (see PREFETCH_MULTIPLIER for the per-queue choice).
    worker_detect_quorum_queues=True,
    broker_native_delayed_delivery_queue_type="quorum",
    worker_prefetch_multiplier=1,
    worker_consumer="workers.deadletter.consumer:DeadLetteringConsumer",
    worker_hijack_root_logger=False,
    # Task events (worker_send_task_events, task_send_sent_event) come from the
    # settings (CELERY_* from TASK_EVENTS, project/settings/base.py), read lazily.
    # A connection lost mid-task: the broker requeues the unacked message, so
    # cancel the local copy instead of finishing it and acking on a dead channel.
    worker_cancel_long_running_tasks_on_connection_loss=True,
)

app.autodiscover_tasks(["workers.inference", "workers.batch", "workers.training", "apps.ops"], related_name="tasks")


@signals.worker_init.connect
def _prefetch_for_queues(sender: Any = None, **kwargs: Any) -> None:
    """Pick the prefetch multiplier from the queues this worker consumes (the smallest wins)."""
    try:
        consumed = list(sender.app.amqp.queues.consume_from or sender.app.amqp.queues)
    except AttributeError:
        return
    values = [PREFETCH_MULTIPLIER.get(name, 1) for name in consumed]
    override = env.get_int("CELERY_PREFETCH_MULTIPLIER", 0)
    sender.prefetch_multiplier = override or (min(values) if values else 1)
