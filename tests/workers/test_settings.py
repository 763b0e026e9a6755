"""The Celery settings that lose nothing, and the traps they avoid."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from apps.eventbus.queues import DELIVERY_LIMIT, PREFETCH_MULTIPLIER, WORK_QUEUES, Queue, quorum_arguments
from project.celery import _prefetch_for_queues, app

# RabbitMQ closes the channel of a consumer holding an unacked message this
# long (the 30 min default of consumer_timeout).
RABBITMQ_CONSUMER_TIMEOUT_S = 30 * 60


def test_lose_nothing_settings() -> None:
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    # a failure that escapes the base class is rejected (dead-lettered), not acked away
    assert conf.task_acks_on_failure_or_timeout is False
    assert conf.broker_transport_options["confirm_publish"] is True
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_ignore_result is True
    assert conf.worker_consumer == "workers.deadletter.consumer:DeadLetteringConsumer"


def test_time_limits_stay_below_the_consumer_timeout() -> None:
    assert app.conf.task_soft_time_limit < app.conf.task_time_limit < RABBITMQ_CONSUMER_TIMEOUT_S


def test_work_queues_are_quorum_queues_on_a_topic_exchange_with_dead_lettering() -> None:
    # topic, not direct: native delayed delivery (countdown retries on quorum queues) refuses direct exchanges
    for queue in WORK_QUEUES:
        args = queue.queue_arguments
        assert queue.exchange.type == "topic" and queue.durable
        assert args["x-queue-type"] == "quorum" and args["x-delivery-limit"] == DELIVERY_LIMIT
        assert args["x-dead-letter-exchange"] == "dlx" and args["x-dead-letter-routing-key"] == queue.name
        assert args["x-dead-letter-strategy"] == "at-least-once" and args["x-overflow"] == "reject-publish"
    assert quorum_arguments("events.x")["x-dead-letter-routing-key"] == "events.x"
    assert app.conf.worker_detect_quorum_queues and app.conf.broker_native_delayed_delivery_queue_type == "quorum"


def test_prefetch_is_chosen_per_queue() -> None:
    def worker(*queues: str) -> SimpleNamespace:
        return SimpleNamespace(
            app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from={q: None for q in queues}))),
            prefetch_multiplier=None,
        )

    for queues, expected in (
        ((Queue.AI_REALTIME,), 4),
        ((Queue.AI_BATCH, Queue.MAINTENANCE), 1),
        ((Queue.AI_TRAINING,), 1),
    ):
        sender = worker(*queues)
        _prefetch_for_queues(sender=sender)
        assert sender.prefetch_multiplier == expected, queues
    assert set(PREFETCH_MULTIPLIER) == {q.value for q in Queue}


def test_workers_do_not_autoscale() -> None:
    # quorum queues have no global QoS, which --autoscale relies on; the Procfile and the images
    # start workers through the entrypoint's roles
    entrypoint = (Path(__file__).resolve().parents[2] / "docker" / "entrypoint.sh").read_text()
    celery_lines = [line for line in entrypoint.splitlines() if "celery" in line and " worker" in line]
    assert celery_lines and not any("--autoscale" in line for line in celery_lines)
