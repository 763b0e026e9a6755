"""Fleet control against real ``celery worker`` processes: revoke, pause across a restart, resume, retry listing.

Every action goes through the operator REST API in this process; the workers run
the probe tasks (tests/integration/workers/probe_tasks.py) on this run's vhost.
Each wait is on a condition (a Redis record, a broker count), never a sleep.
"""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Permission
from kombu import Connection, Producer

from apps.eventbus.queues import Queue, declare_topology
from apps.ops.fleet import delayed
from apps.ops.fleet.figures import broker_queue_counts
from apps.ops.models import FleetAction, PausedQueue
from tests.integration.workers.conftest import probe_key, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

BATCH, MAINTENANCE = Queue.AI_BATCH.value, Queue.MAINTENANCE.value


@pytest.fixture(autouse=True)
def _topology() -> None:
    """The queues exist before a task is published (a test may send before any worker declared them)."""
    from django.conf import settings

    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)
        for queue in (BATCH, MAINTENANCE):
            conn.default_channel.queue_purge(queue)


@pytest.fixture
def operator_api(api_client_for):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username="fleet_ops", password="pw-Secret-123", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="ops", codename__in=["view_fleet", "change_fleet"])
    )
    return api_client_for(user)


def _send(name: str, kwargs: dict, *, queue: str | None = None, task_id: str | None = None) -> str:
    from django.conf import settings

    from apps.eventbus.messages import build_task_message

    task_id = task_id or str(uuid.uuid4())
    msg = build_task_message(name, kwargs, correlation_id=f"c-{task_id[:8]}", task_id=task_id)
    with Connection(settings.BROKER_URL, transport_options={"confirm_publish": True}) as conn:
        Producer(conn.default_channel).publish(
            msg.body,
            exchange=msg.exchange,
            routing_key=queue or msg.routing_key,
            headers=msg.headers,
            **msg.properties,
        )
    return task_id


def _counts(name: str) -> tuple[int | None, int | None]:
    row = broker_queue_counts([name])[0]
    return row.depth, row.consumers


def _workers(response) -> dict:
    assert response.status_code == 201, response.content
    return response.json()["result"]["workers"]


def test_revoke_stops_a_queued_task_from_running(processes, rds, operator_api):
    # given one worker slot kept busy, and a task queued behind it
    processes("worker", name="rv", queues=BATCH, concurrency=1)
    _send("test.hold", {"tag": "rv", "item": "blocker"})
    wait_for(lambda: rds.llen(probe_key("rv", "started")) == 1, message="blocker running")
    victim = _send("test.record", {"tag": "rv", "item": "victim"})

    # when an operator revokes it, then queues another task and frees the slot
    answered = _workers(operator_api.post(f"/api/v1/ops/tasks/{victim}/revoke/", {}, format="json"))
    _send("test.record", {"tag": "rv", "item": "after"})
    rds.set(probe_key("rv", "release"), 1)

    # then the task queued after it ran, the revoked one never did
    wait_for(lambda: rds.sismember(probe_key("rv", "done"), "after"), message="the later task ran")
    assert len(answered) == 1  # the running worker acknowledged the revoke
    assert rds.lrange(probe_key("rv", "runs"), 0, -1) == ["blocker", "after"]
    assert _counts(BATCH)[0] == 0
    row = FleetAction.objects.get(action="revoke")
    assert (row.target, row.requested_by.username) == (victim, "fleet_ops")


def test_a_revoke_outlives_a_worker_restart(processes, rds, operator_api):
    # given a revoke issued while the task is still queued and no worker runs
    victim = str(uuid.uuid4())
    assert _workers(operator_api.post(f"/api/v1/ops/tasks/{victim}/revoke/", {}, format="json")) == {}
    _send("test.record", {"tag": "rr", "item": "victim"}, task_id=victim)
    _send("test.record", {"tag": "rr", "item": "after"})

    # when a worker starts afterwards
    processes("worker", name="rr", queues=BATCH, concurrency=1)

    # then it read the audited revoke at start and drops the task
    wait_for(lambda: rds.sismember(probe_key("rr", "done"), "after"), message="the later task ran")
    assert rds.lrange(probe_key("rr", "runs"), 0, -1) == ["after"]


def test_pause_stops_consumption_survives_a_restart_and_resume_restores_it(processes, rds, operator_api):
    # given a worker consuming ai.batch and maintenance
    first = processes("worker", name="ps1", queues=f"{BATCH},{MAINTENANCE}", concurrency=1)
    wait_for(lambda: _counts(BATCH)[1] == 1, message="ai.batch consumed")

    # when an operator pauses ai.batch
    answered = _workers(operator_api.post(f"/api/v1/ops/queues/{BATCH}/pause/", {"reason": "t"}, format="json"))
    assert len(answered) == 1
    wait_for(lambda: _counts(BATCH)[1] == 0, message="ai.batch consumer cancelled")
    _send("test.record", {"tag": "ps", "item": "held"})
    _send("test.record", {"tag": "ps", "item": "probe-1"}, queue=MAINTENANCE)

    # then the worker still serves maintenance, and ai.batch keeps its message
    wait_for(lambda: rds.sismember(probe_key("ps", "done"), "probe-1"), message="maintenance still consumed")
    assert not rds.sismember(probe_key("ps", "done"), "held")
    assert _counts(BATCH)[0] == 1

    # when the worker restarts (a new process, -Q unchanged)
    first.stop()
    processes("worker", name="ps2", queues=f"{BATCH},{MAINTENANCE}", concurrency=1)
    _send("test.record", {"tag": "ps", "item": "probe-2"}, queue=MAINTENANCE)

    # then the pause holds: it read the PausedQueue row at start
    wait_for(lambda: rds.sismember(probe_key("ps", "done"), "probe-2"), message="restarted worker serves maintenance")
    assert _counts(BATCH) == (1, 0)
    assert not rds.sismember(probe_key("ps", "done"), "held")

    # when the operator resumes ai.batch
    answered = _workers(operator_api.post(f"/api/v1/ops/queues/{BATCH}/resume/", {}, format="json"))

    # then the held task runs, once, and the queue is consumed again
    wait_for(lambda: rds.sismember(probe_key("ps", "done"), "held"), message="held task ran after resume")
    assert list(answered.values()) == [f"consuming {BATCH} again"]
    assert rds.lrange(probe_key("ps", "runs"), 0, -1).count("held") == 1
    assert _counts(BATCH) == (0, 1)
    assert not PausedQueue.objects.exists()
    assert [a.action for a in FleetAction.objects.order_by("created_at")] == ["pause", "resume"]


def test_resume_reaches_only_the_workers_started_for_the_queue(processes, operator_api):
    # given a worker started for maintenance only
    processes("worker", name="mt", queues=MAINTENANCE, concurrency=1)
    _workers(operator_api.post(f"/api/v1/ops/queues/{BATCH}/pause/", {}, format="json"))

    # when ai.batch is resumed
    answered = _workers(operator_api.post(f"/api/v1/ops/queues/{BATCH}/resume/", {}, format="json"))

    # then that worker does not start consuming it
    assert list(answered.values()) == [f"not started for {BATCH}"]
    assert _counts(BATCH)[1] == 0
    assert _counts(MAINTENANCE)[1] == 1


def test_a_task_waiting_out_its_retry_countdown_is_listed_and_runs_once(processes, rds, operator_api):
    # given a task whose first attempt fails and is retried after 6-12 s
    processes("worker", name="rt", queues=BATCH, concurrency=1)
    task_id = _send("test.retry_once_later", {"tag": "rt"})
    wait_for(lambda: rds.get(probe_key("rt", "attempts")) == "1", message="first attempt failed")

    # when an operator lists the tasks while it waits
    def listed() -> list[dict]:
        rows = operator_api.get("/api/v1/ops/tasks/").json()["results"]
        return [r for r in rows if r["id"] == task_id and r["state"] in ("delayed", "scheduled")]

    rows = wait_for(listed, timeout=15, interval=0.2, message="retry listed")

    # then it is listed with its queue and countdown, and still runs afterwards, exactly once
    assert rows[0]["name"] == "test.retry_once_later"
    assert rows[0]["queue"] == BATCH
    assert rows[0]["eta"]
    wait_for(lambda: rds.llen(probe_key("rt", "runs")) == 1, timeout=30, message="the retry ran")
    wait_for(lambda: not any(r["id"] == task_id for r in operator_api.get("/api/v1/ops/tasks/").json()["results"]))
    assert rds.get(probe_key("rt", "attempts")) == "2"
    assert rds.llen(probe_key("rt", "runs")) == 1
    # nothing of it is left anywhere: not queued, not delayed, not dead-lettered
    delay_queues = [f"celery_delayed_{level}" for level in range(delayed.DELAY_LEVELS)]
    counts = broker_queue_counts([BATCH, f"{BATCH}.dlq", *delay_queues])
    assert sum(c.depth or 0 for c in counts) == 0


def test_a_worker_started_only_for_a_paused_queue_waits_until_it_is_resumed(processes, rds, operator_api):
    # given ai.batch paused while no worker runs, and a task waiting in it
    _workers(operator_api.post(f"/api/v1/ops/queues/{BATCH}/pause/", {}, format="json"))
    _send("test.record", {"tag": "po", "item": "waiting"})

    # when a worker started for ai.batch alone comes up
    processes("worker", name="po", queues=BATCH, concurrency=1)

    # then it consumes nothing until the queue is resumed
    assert _counts(BATCH) == (1, 0)
    _workers(operator_api.post(f"/api/v1/ops/queues/{BATCH}/resume/", {}, format="json"))
    wait_for(lambda: rds.sismember(probe_key("po", "done"), "waiting"), message="task ran after resume")
    assert _counts(BATCH) == (0, 1)


def test_revoke_with_terminate_stops_a_running_task_and_it_is_not_redelivered(processes, rds, operator_api):
    # given a running task on a prefork worker with one slot (it would run until released)
    processes("worker", name="tm", queues=BATCH, concurrency=1)
    running = _send("test.hold", {"tag": "tm", "item": "running"})
    wait_for(lambda: rds.llen(probe_key("tm", "started")) == 1, message="task running")

    # when an operator revokes it with terminate
    answered = _workers(operator_api.post(f"/api/v1/ops/tasks/{running}/revoke/", {"terminate": True}, format="json"))

    # then the slot is free for the next tasks (a redelivered copy would hold it again) and it never finished
    assert len(answered) == 1
    for item in ("after", "last"):
        _send("test.record", {"tag": "tm", "item": item})
        wait_for(lambda item=item: rds.sismember(probe_key("tm", "done"), item), message=f"{item} ran")
    assert rds.lrange(probe_key("tm", "started"), 0, -1) == ["running"]
    assert rds.lrange(probe_key("tm", "runs"), 0, -1) == ["after", "last"]
    assert _counts(BATCH)[0] == 0
