"""Permanent failures, exhausted retries and crash loops end as DeadLetter rows; replay runs them again.

Real ``celery worker`` processes and the real archiver command against this
run's RabbitMQ vhost and PostgreSQL database (one worker and archiver shared by
the module). Malformed messages are published with plain kombu, as a buggy or
hostile producer would.
"""

from __future__ import annotations

import json
import time

import pytest
from django.conf import settings
from kombu import Connection, Producer

from tests.integration.workers.conftest import probe_key, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


def _send(name: str, **kwargs) -> str:
    from project.celery import app

    return app.send_task(name, kwargs=kwargs).id


def _dead_letter(task_id: str, timeout: float = 60.0):
    from apps.ops.models import DeadLetter

    return wait_for(
        lambda: DeadLetter.objects.filter(task_id=task_id).first(), timeout=timeout, message=f"dead letter of {task_id}"
    )


def test_permanent_failure_is_dead_lettered_with_traceback_and_replay_records_the_result(fleet, rds, staff_user):
    from apps.ops.deadletters.services import dead_letter_replay
    from apps.ops.models import DeadLetterReplay, ReplayStatus

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
    wait_for(
        lambda: DeadLetterReplay.objects.get(id=replay.id).status == ReplayStatus.SUCCEEDED,
        timeout=30,
        message="replay succeeded",
    )
    assert rds.sismember(probe_key("perm", "done"), "ok")
    assert DeadLetterReplay.objects.get(id=replay.id).requested_by_id == staff_user.id


def test_transient_failure_is_retried_with_backoff_and_succeeds_without_a_dead_letter(fleet, rds):
    from apps.common.logging import set_correlation_id
    from apps.ops.models import DeadLetter

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
    retries = [
        json.loads(line)
        for line in fleet["worker"].log().splitlines()
        if line.startswith("{") and '"task retry' in line and task_id in line
    ]
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
    from apps.eventbus.queues import DELIVERY_LIMIT

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
    wait_for(
        lambda: all(CanaryRun.objects.get(id=i).status in final for i in ids.values()),
        timeout=120,
        message="every canary finished",
    )
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


def test_quorum_queue_consumers_get_a_per_queue_prefetch(fleet):
    """Quorum queues have no global QoS: each consumer's prefetch is its own (1 x 2 processes here)."""
    import subprocess

    from django.conf import settings

    def consumers(column: str) -> dict[str, str]:
        out = subprocess.run(
            ["rabbitmqctl", "list_consumers", "-q", "-p", settings.TEST_VHOST, "queue_name", column],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        return {line.split()[0]: line.split()[1] for line in out.splitlines() if len(line.split()) == 2}

    prefetch, acks = consumers("prefetch_count"), consumers("ack_required")
    assert prefetch["ai.batch"] == "2" and prefetch["maintenance"] == "2", prefetch
    assert acks["ai.batch"] == "true" and acks["maintenance"] == "true", acks
    # the archiver drains every DLQ with manual acks
    assert {"ai.batch.dlq", "ai.realtime.dlq", "ai.training.dlq", "maintenance.dlq"} <= set(acks), acks
    assert all(acks[q] == "true" for q in acks if q.endswith(".dlq"))


def _publish(
    producer: Producer, body: str | bytes, *, headers: dict, content_type: str = "application/json", message_id: str
) -> None:
    producer.publish(
        body,
        exchange="tasks",
        routing_key="ai.batch",
        headers=headers,
        content_type=content_type,
        content_encoding="utf-8",
        delivery_mode=2,
        message_id=message_id,
        correlation_id=message_id,
        retry=True,
    )


def test_malformed_messages_dead_letter_with_a_clear_reason_and_the_worker_keeps_working(fleet, rds):
    from apps.eventbus.messages import build_task_message
    from apps.ops.models import DeadLetter

    cases: dict[str, tuple[str | bytes, dict, str]] = {}
    ok = build_task_message("test.record", {"tag": "m", "item": "x"}, correlation_id="c")
    cases["not_json"] = ("{this is not json", {**ok.headers, "id": "m-not-json"}, "application/json")
    unknown = build_task_message(
        "test.no_such_task", {"tag": "m"}, correlation_id="c", queue="ai.batch", task_id="m-unknown"
    )
    cases["unknown"] = (unknown.body, unknown.headers, "application/json")
    missing = build_task_message("test.needs_args", {"tag": "m"}, correlation_id="c", task_id="m-missing")
    cases["missing"] = (missing.body, missing.headers, "application/json")
    huge = json.dumps([[], {"tag": "m", "item": "x" * 300_000}, {}])
    cases["oversized"] = (huge, {**ok.headers, "id": "m-oversized"}, "application/json")
    cases["pickle"] = (b"\x80\x04K\x01.", {**ok.headers, "id": "m-pickle"}, "application/x-python-serialize")
    cases["not_protocol2"] = ('{"a": 1}', {**ok.headers, "id": "m-shape"}, "application/json")
    cases["no_headers"] = ('{"hello": "world"}', {}, "application/json")

    with Connection(settings.BROKER_URL) as conn:
        producer = Producer(conn.default_channel)
        for label, (body, headers, content_type) in cases.items():
            _publish(producer, body, headers=headers, content_type=content_type, message_id=f"m-{label}")
        # a good task after the bad ones still runs: the worker survived
        good = build_task_message("test.record", {"tag": "m", "item": "after"}, correlation_id="c")
        producer.publish(
            good.body,
            exchange=good.exchange,
            routing_key=good.routing_key,
            headers=good.headers,
            retry=True,
            **good.properties,
        )

    # Eight messages through one prefork child: generous for a loaded 2-core machine.
    wait_for(lambda: rds.sismember(probe_key("m", "done"), "after"), timeout=90, message="good task done")
    wait_for(lambda: DeadLetter.objects.count() >= len(cases), timeout=30, message="all dead letters archived")
    assert fleet["worker"].process.poll() is None

    by_id = {d.task_id: d for d in DeadLetter.objects.all()}
    assert by_id["m-not-json"].exception_class == "MalformedMessage"
    assert "decode" in by_id["m-not-json"].exception_message
    assert by_id["m-not-json"].raw_body == "{this is not json"
    assert by_id["m-unknown"].exception_class == "UnknownTask"
    assert "test.no_such_task" in by_id["m-unknown"].exception_message
    assert by_id["m-missing"].exception_class == "InvalidTaskArguments"
    assert "count" in by_id["m-missing"].exception_message
    assert by_id["m-oversized"].exception_class == "PayloadTooLarge"
    assert by_id["m-pickle"].exception_class in {"InvalidTaskMessage", "MalformedMessage"}
    assert by_id["m-shape"].exception_class == "MalformedMessage"
    no_headers = by_id["m-no_headers"]
    assert no_headers.exception_class == "MalformedMessage" and no_headers.task_name == ""
    for dead in by_id.values():
        assert dead.reason == "rejected", (dead.task_id, dead.reason)
        assert dead.queue == "ai.batch"
    assert not rds.sismember(probe_key("m", "done"), "x")


def test_a_message_whose_ttl_runs_out_is_archived_as_expired(fleet):
    from apps.eventbus.messages import build_task_message
    from apps.ops.models import DeadLetter

    # ai.training has no consumer in this module: the message waits until its TTL runs out
    msg = build_task_message(
        "test.record", {"tag": "ttl", "item": "x"}, correlation_id="c", queue="ai.training", task_id="m-expired"
    )
    with Connection(settings.BROKER_URL) as conn:
        Producer(conn.default_channel).publish(
            msg.body,
            exchange=msg.exchange,
            routing_key=msg.routing_key,
            headers=msg.headers,
            expiration=0.05,
            retry=True,
            **msg.properties,
        )
    dead = wait_for(
        lambda: DeadLetter.objects.filter(task_id="m-expired").first(), timeout=30, message="expired message archived"
    )
    assert dead.reason == "expired" and dead.queue == "ai.training"
    assert dead.exception_class == "MessageExpired" and dead.kwargs == {"tag": "ttl", "item": "x"}
