"""A three-node RabbitMQ cluster loses the node leading the busiest subscriber queue under load.

The relay and a subscriber runner are real processes given a failover
``BROKER_URL`` listing all three private nodes (the test settings put each
host on this run's vhost, as for the shared broker). Events are written to the
outbox in transactions while the node that leads ``events.activity`` (a
quorum queue with members on all three) and holds both processes' connections
is SIGKILLed. Every committed event must be applied exactly once, and both
processes must have reconnected to a surviving node without exiting.

A real ``celery worker`` on the same kind of cluster runs a task published
through the three-host URL after the node it was connected to is killed.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from django.conf import settings
from django.db import connection, transaction

from apps.batch.models import SessionActivity
from apps.eventbus import contracts
from apps.eventbus.models import OutboxMessage, ProcessedEvent
from apps.eventbus.services import outbox_event_add
from tests.integration.eventbus.conftest import wait_until
from tests.integration.workers.conftest import Starter, probe_key
from tests.support.rabbit_cluster import RabbitCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

BUSIEST_QUEUE = "events.activity"  # the activity subscriber binds "#": every event reaches it
EVENTS_PER_TRANSACTION = 10


@pytest.fixture
def cluster():
    rabbit = RabbitCluster(3)
    try:
        rabbit.start_all()
        rabbit.add_vhost(settings.TEST_VHOST)
        yield rabbit
    finally:
        rabbit.cleanup()


class Producer:
    """Writes ``user.action`` events to the outbox, ten per transaction, until stopped."""

    def __init__(self, *, session_id: uuid.UUID, user_id: int) -> None:
        self.session_id, self.user_id = session_id, user_id
        self.committed: list[uuid.UUID] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq = 0
        try:
            while not self.stop.is_set():
                ids = []
                with transaction.atomic():
                    for _ in range(EVENTS_PER_TRANSACTION):
                        seq += 1
                        event = outbox_event_add(
                            event_type=contracts.USER_ACTION,
                            session_id=self.session_id,
                            user_id=self.user_id,
                            data={"seq": seq, "action": "click", "target": seq},
                        )
                        ids.append(event.event_id)
                self.committed.extend(ids)
                # Paced so the relay keeps up on a 2-CPU machine: about 400 events a second.
                self.stop.wait(0.025)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test's assertion
            self.errors.append(exc)
        finally:
            connection.close()


def test_killing_the_leader_of_the_busiest_queue_loses_and_duplicates_no_event(
    cluster, start_relay, start_subscribers, session_factory, user
):
    vhost = settings.TEST_VHOST
    # BROKER_URL, not TEST_BROKER_URL: the child's test settings rewrite every host onto this run's vhost.
    env = {"BROKER_URL": cluster.url()}
    subscribers = start_subscribers("activity", **env)
    relay = start_relay(**env)
    session = session_factory()  # its session.created is the first event
    producer = Producer(session_id=session.id, user_id=user.pk)
    producer.thread.start()
    try:
        wait_until(
            lambda: ProcessedEvent.objects.filter(subscriber="activity").count() >= 200,
            timeout=60,
            what="events flowing through the cluster before the kill",
        )
        members, leader = cluster.members_of(BUSIEST_QUEUE, vhost=vhost), cluster.leader_of(BUSIEST_QUEUE, vhost=vhost)
        held = {name: len(cluster.connections_on(name, vhost=vhost)) for name in cluster.names}
        print(f"{BUSIEST_QUEUE}: members {members}, leader {leader}; connections per node {held}")
        assert members == sorted(cluster.names), "a quorum queue with a member on every node"
        # Both processes connect to the first listed node; the runner declared the queue there, so it leads.
        assert held[leader] >= 2, f"relay and runner connected to the leader {leader}: {held}"

        killed_at = len(producer.committed)
        cluster.kill(leader)
        new_leader = cluster.wait_leader_elsewhere(BUSIEST_QUEUE, not_on=leader, vhost=vhost)
        print(f"killed {leader}; new leader {new_leader}")
        # Load goes on across the failover: 500 more events committed after the kill.
        wait_until(lambda: len(producer.committed) >= killed_at + 500, timeout=60, what="events after the kill")
    finally:
        producer.stop.set()
        producer.thread.join(timeout=30)
    assert not producer.errors, producer.errors

    committed = {*producer.committed}
    total = len(committed) + 1  # + session.created
    wait_until(
        lambda: not OutboxMessage.objects.exclude(status="published").exists(),
        timeout=120,
        what="every outbox row published after the failover",
    )
    wait_until(
        lambda: ProcessedEvent.objects.filter(subscriber="activity").count() >= total,
        timeout=120,
        what="every committed event applied",
    )
    applied = set(ProcessedEvent.objects.filter(subscriber="activity").values_list("event_id", flat=True))
    assert committed <= applied
    assert len(applied) == total
    # Exactly once: the handler's own counters saw each event once (a redelivered batch is a no-op).
    activity = SessionActivity.objects.get(session_id=session.id)
    assert activity.events_total == total
    assert activity.events_by_type == {"session.created": 1, "user.action": total - 1}

    survivors = [name for name in cluster.names if name != leader]
    wait_until(
        lambda: sum(len(cluster.connections_on(name, vhost=vhost)) for name in survivors) >= 2,
        timeout=30,
        what="relay and runner connected to a surviving node",
    )
    assert subscribers.popen.poll() is None, subscribers.output()[-3000:]
    assert relay.popen.poll() is None, relay.output()[-3000:]
    assert "subscribers: broker error" in subscribers.output()
    assert "relay broker error" in relay.output()


@pytest.fixture
def celery_workers(tmp_path):
    starter = Starter(tmp_path)
    yield starter
    starter.stop_all()


def _send_record(url: str, *, tag: str, item: str) -> None:
    """``test.record`` published the way the platform publishes tasks (Celery, confirms on), through ``url``."""
    from project.celery import app

    with app.connection_for_write(url=url) as conn:
        conn.ensure_connection(max_retries=len(url.split(";")))
        app.send_task("test.record", kwargs={"tag": tag, "item": item}, connection=conn)


def test_celery_worker_runs_a_task_after_the_node_it_was_connected_to_is_killed(cluster, celery_workers):
    import redis

    rds = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    url = cluster.url()
    worker = celery_workers("worker", name="cluster", queues="ai.batch", broker_url=url)
    connected = [name for name in cluster.names if cluster.connections_on(name)]
    print(f"worker connected to {connected}; ai.batch leader {cluster.leader_of('ai.batch')}")
    assert connected == [cluster.names[0]], "the first listed node"
    _send_record(url, tag="cf", item="before")
    wait_until(lambda: rds.sismember(probe_key("cf", "done"), "before"), timeout=30, what="the task before the kill")

    victim = connected[0]
    cluster.kill(victim)
    cluster.wait_leader_elsewhere("ai.batch", not_on=victim)
    wait_until(
        lambda: any(cluster.connections_on(name) for name in cluster.alive()),
        timeout=60,
        what="the worker reconnected to a surviving node",
    )
    _send_record(url, tag="cf", item="after")

    wait_until(lambda: rds.sismember(probe_key("cf", "done"), "after"), timeout=60, what="the task after the kill")
    assert rds.lrange(probe_key("cf", "runs"), 0, -1) == ["before", "after"]
    assert worker.process.poll() is None, worker.log()[-3000:]
    rds.close()
