"""Permanent failures, exhausted retries and crash loops end as DeadLetter rows; replay runs them again.

Real ``celery worker`` processes and the real archiver command against this
run's RabbitMQ vhost and PostgreSQL database.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.workers.conftest import probe_key, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


def _send(name: str, **kwargs) -> str:
    from project.celery import app

    return app.send_task(name, kwargs=kwargs).id


def _dead_letter(task_id: str, timeout: float = 60.0):
    from apps.ops.models import DeadLetter

    return wait_for(lambda: DeadLetter.objects.filter(task_id=task_id).first(), timeout=timeout,
                    message=f"dead letter of {task_id}")


def test_permanent_failure_is_dead_lettered_with_traceback_and_replay_records_the_result(fleet, rds, staff_user):
    from apps.ops.models import DeadLetterReplay, ReplayStatus
    from apps.ops.services import dead_letter_replay

    # given a worker and the archiver (the fleet fixture)
    # when a task fails permanently
    task_id = _send("test.permanent", tag="perm")
    dead = _dead_letter(task_id)
    # then it was run once and lands in the DLQ as a row with reason and traceback
    assert rds.get(probe_key("perm", "attempts")) == "1"
    assert dead.queue == "ai.batch"
    assert dead.task_name == "test.permanent"
    assert dead.reason == "rejected"
    assert dead.exception_class == "PermanentError"
    assert "bad input for perm" in dead.exception_message
    assert "Traceback" in dead.traceback and "PermanentError" in dead.traceback
    assert dead.kwargs == {"tag": "perm"}
    assert dead.attempts == 1
    assert dead.x_death and dead.x_death[0]["reason"] == "rejected"
    assert dead.fingerprint

    # when the cause is fixed and an operator replays it
    rds.set(probe_key("perm", "healed"), "1")
    replay = dead_letter_replay(dead_letter_id=dead.id, user=staff_user)
    assert replay.status == ReplayStatus.PUBLISHED
    # then it runs again and the audit row records the success
    wait_for(lambda: DeadLetterReplay.objects.get(id=replay.id).status == ReplayStatus.SUCCEEDED, timeout=30,
             message="replay succeeded")
    assert rds.sismember(probe_key("perm", "done"), "ok")
    assert DeadLetterReplay.objects.get(id=replay.id).requested_by_id == staff_user.id


def test_transient_failure_is_retried_with_backoff_and_succeeds_without_a_dead_letter(fleet, rds):
    from apps.ops.models import DeadLetter

    from apps.common.logging import set_correlation_id

    # when a task fails twice with a transient error (countdown retries on a quorum queue)
    set_correlation_id("cid-flaky-1")
    try:
        task_id = _send("test.flaky", tag="flaky", fail_times=2)
    finally:
        set_correlation_id(None)
    wait_for(lambda: rds.sismember(probe_key("flaky", "done"), "ok"), timeout=60, message="flaky task done")
    # then it succeeded on the third attempt, each retry delayed by the backoff
    assert rds.get(probe_key("flaky", "attempts")) == "3"
    times = [float(t) for t in rds.lrange(probe_key("flaky", "attempt_times"), 0, -1)]
    assert all(later - earlier >= 0.9 for earlier, later in zip(times, times[1:], strict=False)), times
    time.sleep(1.0)
    assert not DeadLetter.objects.exists()
    # and the worker's structured log lines carry the task id and the publisher's correlation id
    retries = [json.loads(line) for line in fleet["worker"].log().splitlines()
               if line.startswith("{") and '"task retry' in line and task_id in line]
    assert len(retries) == 2, retries
    assert all(r["correlation_id"] == "cid-flaky-1" and r["task_id"] == task_id for r in retries)
    assert [r["attempt"] for r in retries] == [1, 2]
    # and native delayed delivery was set up on every queue (quorum queues, topic exchange)
    log = fleet["worker"].log()
    assert "delayed delivery" not in log.lower() or "Failed" not in log, log[-3000:]


def test_a_task_that_keeps_failing_dead_letters_after_its_attempt_budget(fleet, rds):
    task_id = _send("test.always_transient", tag="budget")
    dead = _dead_letter(task_id)
    # then exactly max_attempts (3) runs happened: not before, not never
    assert dead.reason == "retries_exhausted"
    assert dead.attempts == 3
    assert dead.exception_class == "TransientError"
    time.sleep(2.5)
    assert rds.get(probe_key("budget", "attempts")) == "3"


def test_a_task_that_crashes_its_worker_every_time_dead_letters_at_the_delivery_limit(fleet, rds):
    from workers.queues import DELIVERY_LIMIT

    worker = fleet["worker"]
    task_id = _send("test.crash", tag="crashy")
    dead = _dead_letter(task_id, timeout=120)
    # then the broker stopped the loop: delivered once plus DELIVERY_LIMIT redeliveries
    assert dead.reason == "delivery_limit"
    runs = int(rds.get(probe_key("crashy", "attempts")))
    assert runs == DELIVERY_LIMIT + 1, runs
    assert dead.attempts == runs
    assert dead.exception_class == "DeliveryLimitExceeded"
    # and the worker survived its children's deaths
    assert worker.process.poll() is None


def test_canary_modes_end_to_end_through_the_api(fleet, api_client_for, staff_user):
    from apps.ops.models import CanaryRun

    client = api_client_for(staff_user)
    # when an operator sends one canary of each mode
    ids = {}
    for mode in ("ok", "slow", "fail", "crash"):
        response = client.post("/api/v1/ops/canary/", {"mode": mode}, format="json")
        assert response.status_code == 201, response.json()
        assert response.json()["status"] == "pending"
        ids[mode] = response.json()["id"]

    def status(mode: str) -> dict:
        return client.get(f"/api/v1/ops/canary/{ids[mode]}/").json()

    final = {"succeeded", "dead_lettered"}
    wait_for(lambda: all(CanaryRun.objects.get(id=i).status in final for i in ids.values()), timeout=120,
             message="every canary finished")
    # then ok and slow succeed, fail dead-letters as rejected, crash at the delivery limit
    assert status("ok")["status"] == "succeeded" and status("ok")["dead_letter"] is None
    assert status("slow")["status"] == "succeeded"
    assert status("fail")["status"] == "dead_lettered"
    assert status("fail")["dead_letter"]["reason"] == "rejected"
    assert status("fail")["dead_letter"]["exception_class"] == "CanaryFailure"
    assert status("crash")["status"] == "dead_lettered"
    assert status("crash")["dead_letter"]["reason"] == "delivery_limit"
    # and both are in the operators' dead-letter list
    listed = client.get("/api/v1/dead-letters/", {"task_name": "ops.canary"}).json()["results"]
    assert {d["reason"] for d in listed} == {"rejected", "delivery_limit"}
