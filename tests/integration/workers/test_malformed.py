"""Malformed task messages dead-letter with a clear reason and never crash the worker.

Messages are published with plain kombu (as a buggy or hostile producer
would) to a real worker; the archiver turns each into a DeadLetter row.
"""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from kombu import Connection, Producer

from tests.integration.workers.conftest import probe_key, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def _publish(producer: Producer, body: str | bytes, *, headers: dict, content_type: str = "application/json",
             message_id: str) -> None:
    producer.publish(body, exchange="tasks", routing_key="ai.batch", headers=headers, content_type=content_type,
                     content_encoding="utf-8", delivery_mode=2, message_id=message_id, correlation_id=message_id,
                     retry=True)


def test_malformed_messages_dead_letter_with_a_clear_reason_and_the_worker_keeps_working(fleet, rds):
    from apps.ops.models import DeadLetter
    from workers.base import build_task_message

    cases: dict[str, tuple[str | bytes, dict, str]] = {}
    ok = build_task_message("test.record", {"tag": "m", "item": "x"}, correlation_id="c")
    cases["not_json"] = ("{this is not json", {**ok.headers, "id": "m-not-json"}, "application/json")
    unknown = build_task_message("test.no_such_task", {"tag": "m"}, correlation_id="c", queue="ai.batch",
                                 task_id="m-unknown")
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
        producer.publish(good.body, exchange=good.exchange, routing_key=good.routing_key, headers=good.headers,
                         retry=True, **good.properties)

    wait_for(lambda: rds.sismember(probe_key("m", "done"), "after"), timeout=30, message="good task done")
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
