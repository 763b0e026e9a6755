"""The task base class: classification, attempt budget, arguments, routing, message building.

Unit level (eager ``apply``); the broker side of the same claims is proved by
tests/integration/workers with real workers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery.exceptions import Reject
from django.db import InterfaceError, OperationalError
from prometheus_client import REGISTRY

from apps.common.logging import set_correlation_id
from apps.eventbus.messages import (
    HEADER_ATTEMPT,
    HEADER_CORRELATION_ID,
    TASK_PAYLOAD_MAX_BYTES,
    PayloadTooLargeError,
    build_task_message,
)
from apps.eventbus.queues import Queue, queue_for_task_name
from workers.base import (
    BaseTask,
    InvalidTaskArguments,
    PermanentError,
    TransientError,
    _stamp_headers,
    backoff_seconds,
    task,
)

CALLS: list[dict[str, Any]] = []


class AlreadyDone(Exception):
    pass


@task(
    name="test.unit_classified",
    queue=Queue.AI_BATCH,
    retry_on=(ConnectionError,),
    fail_on=(ValueError,),
    ignore=(AlreadyDone,),
    max_attempts=3,
    backoff_base=1.0,
    backoff_max=1.0,
)
def classified(*, what: str, **kwargs: Any) -> str:
    CALLS.append({"what": what})
    if what == "transient":
        raise ConnectionError("down")
    if what == "value":
        raise ValueError("bad value")
    if what == "done":
        raise AlreadyDone()
    if what == "bug":
        raise KeyError("oops")
    return "ok"


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


def test_success_runs_once_and_tolerates_unknown_kwargs(db) -> None:
    labels = {"task": "test.unit_classified", "queue": "ai.batch", "outcome": "success"}
    before = REGISTRY.get_sample_value("ce_tasks_total", labels) or 0.0
    result = classified.apply(kwargs={"what": "fine", "added_in_a_later_release": 1})
    assert result.result == "ok" and len(CALLS) == 1
    labels = {"task": "test.unit_classified", "queue": "ai.batch", "outcome": "success"}
    assert REGISTRY.get_sample_value("ce_tasks_total", labels) == before + 1


def test_fail_on_rejects_without_retry_and_records_the_failure(db) -> None:
    from apps.ops.models import TaskFailure

    result = classified.apply(kwargs={"what": "value"}, task_id="t-value")
    assert isinstance(result.result, Reject) and result.result.requeue is False
    assert len(CALLS) == 1
    failure = TaskFailure.objects.get(task_id="t-value")
    assert (failure.exception_class, failure.reason, failure.attempts) == ("ValueError", "rejected", 1)
    assert "ValueError: bad value" in failure.traceback


def test_unclassified_errors_are_permanent(db) -> None:
    from apps.ops.models import TaskFailure

    classified.apply(kwargs={"what": "bug"}, task_id="t-bug")
    assert len(CALLS) == 1 and TaskFailure.objects.get(task_id="t-bug").exception_class == "KeyError"


def test_ignored_errors_ack_quietly(db) -> None:
    from apps.ops.models import TaskFailure

    result = classified.apply(kwargs={"what": "done"}, task_id="t-done")
    assert result.successful() and result.result is None
    assert not TaskFailure.objects.filter(task_id="t-done").exists()


def test_transient_errors_retry_until_the_attempt_budget_then_dead_letter(db) -> None:
    from apps.ops.models import TaskFailure

    classified.apply(kwargs={"what": "transient"}, task_id="t-transient")
    # max_attempts=3: three runs, not two, not forever
    assert len(CALLS) == 3
    failure = TaskFailure.objects.get(task_id="t-transient")
    assert (failure.reason, failure.attempts, failure.exception_class) == ("retries_exhausted", 3, "ConnectionError")


def test_missing_or_non_json_arguments_fail_now(db) -> None:
    from apps.ops.models import TaskFailure

    classified.apply(kwargs={}, task_id="t-missing")
    assert not CALLS
    failure = TaskFailure.objects.get(task_id="t-missing")
    assert failure.exception_class == "InvalidTaskArguments" and "what" in failure.exception_message
    classified.apply(kwargs={"what": "x" * (TASK_PAYLOAD_MAX_BYTES + 1)}, task_id="t-big")
    assert TaskFailure.objects.get(task_id="t-big").exception_class == "PayloadTooLarge"
    assert not CALLS


def test_classification_precedence() -> None:
    instance = classified
    assert instance._classify(AlreadyDone()) == "ignore"
    assert instance._classify(ValueError()) == "fail"
    assert instance._classify(PermanentError()) == "fail"
    assert instance._classify(InvalidTaskArguments()) == "fail"
    assert instance._classify(ConnectionError()) == "retry"
    assert instance._classify(TransientError()) == "retry"
    assert instance._classify(RuntimeError()) == "fail"
    # A database outage is transient for every task, declared or not.
    assert instance._classify(OperationalError("terminating connection due to administrator command")) == "retry"
    assert instance._classify(InterfaceError("connection already closed")) == "retry"


def test_attempt_number_counts_retries_and_crash_redeliveries() -> None:
    classified.push_request(**{HEADER_ATTEMPT: 3, "x-delivery-count": 2})
    try:
        assert classified.attempt_number() == 5
    finally:
        classified.pop_request()
    classified.push_request()
    try:
        assert classified.attempt_number() == 1
    finally:
        classified.pop_request()


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    for attempt, low, high in ((1, 1, 2), (2, 2, 4), (3, 4, 8), (10, 30, 60)):
        values = {backoff_seconds(attempt, base=2.0, cap=60.0) for _ in range(200)}
        assert min(values) >= low and max(values) <= high, (attempt, values)
    assert len({backoff_seconds(5, base=2.0, cap=300.0) for _ in range(200)}) > 3


def test_routing_by_task_name() -> None:
    from project.celery import app

    assert queue_for_task_name("ai.generate_suggestions") == Queue.AI_REALTIME
    assert queue_for_task_name("ai.train_next_action") == Queue.AI_TRAINING
    assert queue_for_task_name("batch.backfill_embeddings") == Queue.AI_BATCH
    assert queue_for_task_name("ops.canary") == Queue.MAINTENANCE
    route = app.amqp.router.route({}, "test.unit_classified", (), {})
    assert route["queue"].name == "ai.batch" and route["queue"].exchange.name == "tasks"
    assert route["queue"].queue_arguments["x-queue-type"] == "quorum"


def test_task_names_must_be_explicit() -> None:
    with pytest.raises(ValueError):
        task(name="nodots", queue=Queue.AI_BATCH)


def test_build_task_message_is_a_protocol_2_message() -> None:
    msg = build_task_message("ops.canary", {"canary_id": "c", "mode": "ok"}, correlation_id="cid-7", task_id="t-1")
    assert msg.exchange == "tasks" and msg.routing_key == msg.queue == "maintenance"
    assert msg.headers["task"] == "ops.canary" and msg.headers["id"] == "t-1"
    assert msg.headers[HEADER_CORRELATION_ID] == "cid-7" and msg.headers[HEADER_ATTEMPT] == 1
    args, kwargs, embed = json.loads(msg.body)
    assert args == [] and kwargs == {"canary_id": "c", "mode": "ok"} and "callbacks" in embed
    assert msg.properties["content_type"] == "application/json" and msg.properties["delivery_mode"] == 2
    with pytest.raises(PayloadTooLargeError):
        build_task_message("ops.canary", {"blob": "x" * TASK_PAYLOAD_MAX_BYTES}, correlation_id=None)


def test_published_messages_carry_the_current_correlation_id() -> None:
    token_value = "cid-from-request"
    set_correlation_id(token_value)
    try:
        headers: dict[str, Any] = {}
        _stamp_headers(headers=headers)
        assert headers == {HEADER_CORRELATION_ID: token_value, HEADER_ATTEMPT: 1}
        kept = {HEADER_CORRELATION_ID: "explicit", HEADER_ATTEMPT: 4}
        _stamp_headers(headers=kept)
        assert kept == {HEADER_CORRELATION_ID: "explicit", HEADER_ATTEMPT: 4}
    finally:
        set_correlation_id(None)


def test_every_task_uses_the_base_class() -> None:
    from project.celery import app

    app.loader.import_default_modules()
    ours = [t for name, t in app.tasks.items() if not name.startswith("celery.")]
    assert ours and all(isinstance(t, BaseTask) for t in ours)
    assert all(t.acks_late and t.reject_on_worker_lost for t in ours)


def test_a_direct_call_runs_the_function_and_raises_its_own_errors() -> None:
    assert classified(what="fine") == "ok"
    with pytest.raises(ValueError, match="bad value"):
        classified(what="value")
    with pytest.raises(ConnectionError):
        classified(what="transient")
    assert len(CALLS) == 3
