"""Faults: a worker killed with SIGKILL mid-task, and a RabbitMQ restart with tasks in flight.

The restart runs against a private RabbitMQ node on free ports (never the shared one).
"""

from __future__ import annotations

import os
import signal

import pytest
from kombu import Connection, Producer

from tests.integration.workers.conftest import probe_key, wait_for
from tests.support.services import PrivateRabbitMQ

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def _publish_all(url: str, items: list[str], *, tag: str, seconds: float) -> None:
    from apps.eventbus.messages import build_task_message

    with Connection(url) as conn:
        conn.ensure_connection(max_retries=30, interval_start=0.5, interval_step=0.5, interval_max=2)
        producer = Producer(conn.default_channel)
        for item in items:
            msg = build_task_message(
                "test.sleep_record", {"tag": tag, "item": item, "seconds": seconds}, correlation_id=f"c-{item}"
            )
            producer.publish(
                msg.body,
                exchange=msg.exchange,
                routing_key=msg.routing_key,
                headers=msg.headers,
                retry=True,
                retry_policy={"max_retries": 30, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 2},
                **msg.properties,
            )


def _publish_task(url: str, name: str, kwargs: dict, *, task_id: str) -> None:
    from apps.eventbus.messages import build_task_message

    msg = build_task_message(name, kwargs, correlation_id="c", task_id=task_id)
    with Connection(url) as conn:
        Producer(conn.default_channel).publish(
            msg.body,
            exchange=msg.exchange,
            routing_key=msg.routing_key,
            headers=msg.headers,
            retry=True,
            **msg.properties,
        )


def test_kill_9_of_a_worker_mid_task_redelivers_the_task_and_it_completes(processes, rds):
    from django.conf import settings

    # given a worker running a slow task (thread pool: SIGKILL takes the whole process)
    first = processes("worker", name="k9a", pool="threads", concurrency=2)
    _publish_all(settings.BROKER_URL, ["only"], tag="k9", seconds=2.0)
    wait_for(lambda: rds.llen(probe_key("k9", "started")) == 1, timeout=30, message="task started")
    # when the worker is killed mid-task
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=10)
    assert not rds.sismember(probe_key("k9", "done"), "only")
    # then a surviving worker gets the unacked message and completes it
    processes("worker", name="k9b", pool="threads", concurrency=2)
    wait_for(lambda: rds.sismember(probe_key("k9", "done"), "only"), timeout=60, message="task completed")
    assert rds.llen(probe_key("k9", "started")) == 2
    assert rds.lrange(probe_key("k9", "runs"), 0, -1) == ["only"]


def test_rabbitmq_restart_with_tasks_in_flight_loses_nothing_and_workers_resume(processes, rds):
    from apps.ops.models import DeadLetter

    rabbit = PrivateRabbitMQ()
    try:
        rabbit.start()
        # given two workers on a private broker, and tasks in flight
        workers = [
            processes("worker", name=f"rr{i}", concurrency=2, broker_url=rabbit.url, wait_ready=False) for i in range(2)
        ]
        archiver = processes("archiver", name="rr-archiver", broker_url=rabbit.url)
        for worker in workers:
            processes.wait_ready(worker)
        before = [f"b{i}" for i in range(40)]
        _publish_all(rabbit.url, before, tag="rr", seconds=0.2)
        wait_for(lambda: rds.scard(probe_key("rr", "done")) >= 5, timeout=60, message="some tasks done")
        # when RabbitMQ restarts
        rabbit.restart(down_for=1.0)
        # and more tasks are published after it is back
        after = [f"a{i}" for i in range(10)]
        _publish_all(rabbit.url, after, tag="rr", seconds=0.05)
        # then every task completes (side effects deduplicated by item), with no operator action
        wait_for(
            lambda: rds.scard(probe_key("rr", "done")) == len(before) + len(after),
            timeout=120,
            message="every task done after the restart",
        )
        assert rds.smembers(probe_key("rr", "done")) == set(before + after)
        assert all(w.process.poll() is None for w in workers)
        # and the archiver reconnected by itself too: a failure after the restart becomes a row
        _publish_task(rabbit.url, "test.permanent", {"tag": "rr-dead"}, task_id="rr-dead")
        wait_for(
            lambda: DeadLetter.objects.filter(task_id="rr-dead", reason="rejected").exists(),
            timeout=60,
            message="dead letter archived after the restart",
        )
        assert archiver.process.poll() is None
    finally:
        rabbit.cleanup()
