"""Writes of the ops app: dead letters (archive, replay, discard, purge), task failure notes, canary runs.

Long on purpose: the dead-letter lifecycle (failure note, archive, decode,
replay, discard, purge) is one state machine over ``DeadLetter`` and
``DeadLetterReplay``; each transition's guard reads the others' states, and
keeping them in one module keeps that machine readable in one place. The
canary (the last section) is small and shares the replay's publisher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from apps.common.exceptions import ApplicationError, Conflict, NotFound, ValidationFailed
from apps.eventbus.messages import (
    BROKER_DEATH_HEADERS,
    HEADER_ATTEMPT,
    HEADER_CORRELATION_ID,
    HEADER_DEATH,
    HEADER_DELIVERY_COUNT,
    HEADER_REPLAY_ID,
    HEADER_REPLAYS,
    build_task_message,
    event_failure_key,
    is_event_queue,
)
from apps.eventbus.publisher import OutgoingMessage, publish_confirmed
from apps.eventbus.queues import TASKS_EXCHANGE, Queue, declare_topology
from apps.ops.models import (
    CanaryMode,
    CanaryRun,
    CanaryStatus,
    DeadLetter,
    DeadLetterReason,
    DeadLetterReplay,
    DeadLetterStatus,
    ReplayStatus,
    TaskFailure,
)

logger = logging.getLogger(__name__)

# Test hook: SIGKILL a replaying process after its claim commits and before it
# publishes (the window tests/integration/ops/test_replay_crash.py proves safe).
CRASH_BEFORE_PUBLISH_ENV = "OPS_REPLAY_CRASH_BEFORE_PUBLISH"

CANARY_TASK_NAME = "ops.canary"

# A replayed message starts clean of RabbitMQ's dead-lettering and redelivery headers.
_BROKER_HEADERS = BROKER_DEATH_HEADERS


# --- task failure notes --------------------------------------------------------


def task_failure_record(
    *,
    task_id: str,
    task_name: str,
    queue: str,
    exception_class: str,
    exception_message: str,
    traceback: str,
    attempts: int,
    reason: str,
) -> TaskFailure:
    """Written by the worker right before it rejects a task (the archiver reads it)."""
    failure, _ = TaskFailure.objects.update_or_create(
        task_id=task_id,
        defaults={
            "task_name": task_name[:200],
            "queue": queue[:200],
            "exception_class": exception_class[:200],
            "exception_message": exception_message[:10_000],
            "traceback": traceback[:50_000],
            "attempts": attempts,
            "reason": reason,
        },
    )
    return failure


# --- archiving -----------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


_VOLATILE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|0x[0-9a-f]+|\d+", re.IGNORECASE)


def dead_letter_fingerprint(
    *, queue: str, task_name: str, reason: str, exception_class: str, exception_message: str
) -> str:
    """Equal failures share a fingerprint: ids and numbers in the message do not split them."""
    normalized = _VOLATILE.sub("?", exception_message)[:500]
    raw = "|".join((queue, task_name, reason, exception_class, normalized))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _decode_body(body: bytes | str, content_type: str | None) -> tuple[list, dict, str, str | None]:
    """(args, kwargs, raw_body, problem) of a task message body."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    if content_type not in (None, "", "application/json"):
        return [], {}, text[:100_000], f"content type {content_type!r} is not accepted (JSON only)"
    try:
        payload = json.loads(text)
    except ValueError:
        return [], {}, text[:100_000], "body is not valid JSON"
    if (
        isinstance(payload, list)
        and len(payload) == 3
        and isinstance(payload[0], list)
        and isinstance(payload[1], dict)
    ):
        return payload[0], payload[1], "", None
    return [], {}, text[:100_000], "body is not a Celery protocol 2 task payload"


EVENT_TASK_NAME_PREFIX = "event:"


def event_dead_letter_decode(*, body: bytes | str, properties: dict[str, Any] | None) -> dict[str, Any]:
    """What a row needs from a dead-lettered domain event: its envelope, id, type and any body problem.

    Lax on purpose (not the contract parse): an event its subscriber refused
    for breaking the contract must still be stored whole for the operator.
    """
    properties = properties or {}
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    content_type = properties.get("content_type")
    payload: dict[str, Any] = {}
    problem: str | None = None
    if content_type not in (None, "", "application/json"):
        problem = f"content type {content_type!r} is not accepted (JSON only)"
    else:
        try:
            decoded = json.loads(text)
        except ValueError:
            problem = "body is not valid JSON"
        else:
            if isinstance(decoded, dict):
                payload = decoded
            else:
                problem = "body is not a JSON object (an event envelope)"
    event_id = str(payload.get("event_id") or properties.get("message_id") or "")
    event_type = str(payload.get("event_type") or properties.get("type") or "")
    return {
        "payload": payload,
        "raw_body": text[:100_000] if problem else "",
        "problem": problem,
        "event_id": event_id,
        "event_type": event_type,
        "task_name": f"{EVENT_TASK_NAME_PREFIX}{event_type or 'unknown'}",
        "correlation_id": str(payload.get("correlation_id") or properties.get("correlation_id") or ""),
    }


def dead_letter_archive(
    *, dead_letter_queue: str, body: bytes | str, headers: dict[str, Any] | None, properties: dict[str, Any] | None
) -> tuple[DeadLetter, bool]:
    """Store one DLQ message as a row; idempotent (a redelivered message returns the existing row).

    A task's row is keyed by its task id; a domain event's (from
    ``events.<subscriber>.dlq``) by queue, event id and replay, since one event
    may die in several subscribers and a replay keeps its event id.
    """
    headers = dict(headers or {})
    properties = dict(properties or {})
    x_death = [d for d in (headers.get(HEADER_DEATH) or []) if isinstance(d, dict)]
    latest = x_death[0] if x_death else {}
    original_queue = str(
        latest.get("queue") or headers.get("x-first-death-queue") or dead_letter_queue.removesuffix(".dlq")
    )
    broker_reason = str(latest.get("reason") or headers.get("x-first-death-reason") or "rejected")
    death_count = sum(int(d.get("count") or 1) for d in x_death) or 1
    raw_bytes = body if isinstance(body, bytes) else body.encode()
    event = event_dead_letter_decode(body=body, properties=properties) if is_event_queue(original_queue) else None
    if event is not None:
        task_id, task_name, correlation_id = event["event_id"], event["task_name"], event["correlation_id"]
        marker = "|".join(
            (
                original_queue,
                task_id or hashlib.sha256(raw_bytes).hexdigest(),
                str(headers.get(HEADER_REPLAY_ID) or ""),
                str(headers.get(HEADER_REPLAYS) or ""),
            )
        )
        message_key = f"event:{hashlib.sha256(marker.encode()).hexdigest()[:40]}:{death_count}"
    else:
        task_id = str(headers.get("id") or properties.get("correlation_id") or properties.get("message_id") or "")
        task_name = str(headers.get("task") or "")
        correlation_id = str(headers.get(HEADER_CORRELATION_ID) or "")
        identity = task_id or hashlib.sha256(raw_bytes + repr(sorted(map(str, headers))).encode()).hexdigest()
        message_key = f"{identity}:{death_count}"[:300]

    existing = DeadLetter.objects.filter(message_key=message_key).first()
    if existing is not None:
        return existing, False

    if event is not None:
        args, kwargs, raw_body, body_problem = [], event["payload"], event["raw_body"], event["problem"]
        failure_key = event_failure_key(queue=original_queue, event_id=task_id) if task_id else ""
    else:
        args, kwargs, raw_body, body_problem = _decode_body(body, properties.get("content_type"))
        failure_key = task_id
    failure = TaskFailure.objects.filter(task_id=failure_key).first() if failure_key else None
    redeliveries = int(headers.get(HEADER_DELIVERY_COUNT) or 0)
    first_attempt = int(headers.get(HEADER_ATTEMPT) or 1)

    if broker_reason == "delivery_limit":
        reason = DeadLetterReason.DELIVERY_LIMIT
    elif broker_reason == "expired":
        reason = DeadLetterReason.EXPIRED
    elif failure is not None and failure.reason == DeadLetterReason.RETRIES_EXHAUSTED:
        reason = DeadLetterReason.RETRIES_EXHAUSTED
    else:
        reason = DeadLetterReason.REJECTED

    if failure is not None:
        exception_class, exception_message, traceback = (
            failure.exception_class,
            failure.exception_message,
            failure.traceback,
        )
        attempts = failure.attempts
    elif reason == DeadLetterReason.DELIVERY_LIMIT:
        # The dead-lettered copy carries no x-delivery-count: the broker gave
        # up after its limit, so the deliveries were the first plus the limit.
        from apps.eventbus.queues import DELIVERY_LIMIT

        deliveries = max(redeliveries, DELIVERY_LIMIT) + 1
        exception_class = "DeliveryLimitExceeded"
        exception_message = (
            f"delivered {deliveries} times without an ack (the worker died mid-task each time); "
            "the queue's delivery limit dead-lettered it"
        )
        traceback, attempts = "", first_attempt - 1 + deliveries
    elif reason == DeadLetterReason.EXPIRED:
        exception_class, exception_message, traceback = "MessageExpired", "the message's TTL ran out in the queue", ""
        attempts = first_attempt + redeliveries - 1
    elif body_problem is not None:
        exception_class, exception_message, traceback = "MalformedMessage", body_problem, ""
        attempts = 0
    elif event is None and not task_name:
        exception_class, exception_message, traceback = "MalformedMessage", "no task name in the headers", ""
        attempts = 0
    else:
        exception_class, exception_message, traceback = "", "", ""
        attempts = first_attempt + redeliveries

    times = [t for t in (_as_datetime(d.get("time")) for d in x_death) if t is not None]
    now = timezone.now()
    first_failed_at = min([*times, failure.created_at] if failure else times, default=now)
    last_failed_at = max(times, default=now)

    clean_headers = _json_safe({k: v for k, v in headers.items() if k != HEADER_DEATH})
    replay_id = headers.get(HEADER_REPLAY_ID)
    replay = DeadLetterReplay.objects.filter(id=replay_id).first() if _is_uuid(replay_id) else None

    with transaction.atomic():
        dead_letter, created = DeadLetter.objects.get_or_create(
            message_key=message_key,
            defaults={
                "queue": original_queue[:200],
                "dead_letter_queue": dead_letter_queue[:200],
                "task_name": task_name[:200],
                "task_id": task_id[:200],
                "correlation_id": correlation_id[:100],
                "args": _json_safe(args),
                "kwargs": _json_safe(kwargs),
                "raw_body": raw_body,
                "headers": clean_headers,
                "properties": _json_safe(properties),
                "x_death": _json_safe(x_death),
                "exception_class": exception_class[:200],
                "exception_message": exception_message,
                "traceback": traceback,
                "attempts": max(attempts, 0),
                "reason": reason,
                "first_failed_at": first_failed_at,
                "last_failed_at": last_failed_at,
                "fingerprint": dead_letter_fingerprint(
                    queue=original_queue,
                    task_name=task_name,
                    reason=reason,
                    exception_class=exception_class,
                    exception_message=exception_message,
                ),
                "replay_of": replay.dead_letter if replay else None,
            },
        )
        if created and replay is not None:
            DeadLetterReplay.objects.filter(id=replay.id).update(
                status=ReplayStatus.DEAD_LETTERED,
                error=f"{exception_class}: {exception_message}"[:10_000],
                finished_at=now,
            )
        if created and task_name == CANARY_TASK_NAME and task_id:
            CanaryRun.objects.filter(task_id=task_id).update(status=CanaryStatus.DEAD_LETTERED, finished_at=now)
    return dead_letter, created


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except (TypeError, ValueError):
        return False
    return True


# --- replay, discard, purge ----------------------------------------------------


def _replay_message(dead_letter: DeadLetter, *, replay_id: str, new_task_id: str) -> tuple[str, dict, dict]:
    headers = {k: v for k, v in (dead_letter.headers or {}).items() if k not in _BROKER_HEADERS}
    properties = {
        k: v
        for k, v in (dead_letter.properties or {}).items()
        if k in ("content_type", "content_encoding", "priority", "reply_to")
    }
    properties.setdefault("content_type", "application/json")
    properties.setdefault("content_encoding", "utf-8")
    if dead_letter.raw_body:
        body = dead_letter.raw_body
    else:
        body = json.dumps(
            [dead_letter.args, dead_letter.kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
        )
    if headers.get("task"):
        headers["id"] = new_task_id
        headers["root_id"] = new_task_id
        headers["retries"] = 0
    headers[HEADER_ATTEMPT] = 1
    headers[HEADER_REPLAY_ID] = replay_id
    properties["correlation_id"] = new_task_id
    properties["message_id"] = new_task_id
    properties["delivery_mode"] = 2
    return body, headers, properties


def _publish(*, queue: str, body: str, headers: dict, properties: dict) -> None:
    """Publish to ``tasks`` (routing key = the work queue), confirmed; the topology is declared first."""
    publish_confirmed(
        OutgoingMessage(
            body=body, exchange=TASKS_EXCHANGE.name, routing_key=queue, headers=headers, properties=properties
        ),
        declare=declare_topology,
    )


def _replay_event_message(dead_letter: DeadLetter, *, replay_id: str) -> tuple[str, dict, dict]:
    # The event keeps its event_id: the subscriber applies each id once, so a
    # replay of an event it never applied is applied, and a repeat is a no-op.
    headers = {k: v for k, v in (dead_letter.headers or {}).items() if k not in _BROKER_HEADERS}
    headers[HEADER_REPLAY_ID] = replay_id
    properties = {
        k: v
        for k, v in (dead_letter.properties or {}).items()
        if k in ("content_type", "content_encoding", "correlation_id", "message_id", "type")
    }
    properties.setdefault("content_type", "application/json")
    properties.setdefault("content_encoding", "utf-8")
    if dead_letter.task_id:
        properties["message_id"] = dead_letter.task_id
    properties["delivery_mode"] = 2
    body = dead_letter.raw_body or json.dumps(dead_letter.kwargs)
    return body, headers, properties


def _publish_event(*, queue: str, body: str, headers: dict, properties: dict) -> None:
    """Publish to one subscriber's queue only (default exchange, key = queue), with a publisher confirm.

    Not to ``events``: every other subscriber bound there has applied or
    dead-lettered the event on its own. The queue is declared passively: a
    subscriber that no longer exists makes the replay fail instead of the
    broker dropping the message unroutable.
    """
    publish_confirmed(
        OutgoingMessage(body=body, exchange="", routing_key=queue, headers=headers, properties=properties),
        passive_queue=queue,
    )


def _replay_interrupted(dead_letter: DeadLetter) -> bool:
    """Its last replay is still pending after ``OPS_REPLAY_PENDING_TIMEOUT_S``: the process that claimed it died
    before its publish was confirmed. That replay is marked failed, and a new one may go ahead without force."""
    latest = dead_letter.replays.order_by("-created_at").first()
    if latest is None or latest.status != ReplayStatus.PENDING:
        return False
    if timezone.now() - latest.created_at < timedelta(seconds=settings.OPS_REPLAY_PENDING_TIMEOUT_S):
        return False  # another request is publishing it right now
    DeadLetterReplay.objects.filter(id=latest.id, status=ReplayStatus.PENDING).update(
        status=ReplayStatus.PUBLISH_FAILED,
        error="interrupted: the replaying process ended before its publish was confirmed",
        finished_at=timezone.now(),
    )
    return True


def dead_letter_replay(*, dead_letter_id: Any, user: Any | None, force: bool = False) -> DeadLetterReplay:
    """Publish the dead task again (a new task id); once per dead letter unless ``force``.

    A dead-lettered domain event goes back to its one subscriber's queue with
    its own event id (``DeadLetterReplay.new_task_id`` holds that id).
    """
    new_task_id = str(uuid.uuid4())
    with transaction.atomic():
        dead_letter = DeadLetter.objects.select_for_update().filter(id=dead_letter_id).first()
        if dead_letter is None:
            raise NotFound("Dead letter not found.", details={"id": str(dead_letter_id)})
        is_event = is_event_queue(dead_letter.queue)
        if is_event and dead_letter.task_id:
            new_task_id = dead_letter.task_id
        if dead_letter.status == DeadLetterStatus.REPLAYED and not force and not _replay_interrupted(dead_letter):
            raise Conflict(
                'This dead letter was already replayed; send {"force": true} to replay it again.',
                code="already_replayed",
                details={"id": str(dead_letter.id)},
            )
        if dead_letter.status == DeadLetterStatus.DISCARDED and not force:
            raise Conflict(
                'This dead letter was discarded; send {"force": true} to replay it anyway.',
                code="discarded",
                details={"id": str(dead_letter.id)},
            )
        replay = DeadLetterReplay.objects.create(
            dead_letter=dead_letter,
            requested_by=user if getattr(user, "pk", None) else None,
            forced=force,
            new_task_id=new_task_id,
            status=ReplayStatus.PENDING,
        )
        previous_status = dead_letter.status
        dead_letter.status = DeadLetterStatus.REPLAYED
        dead_letter.save(update_fields=["status", "updated_at"])
    # The publish is a side effect: it happens after the claim is committed, and
    # a failed publish releases the claim and is recorded on the audit row. A
    # process that dies in between leaves the replay pending: the next request
    # takes it over (_replay_interrupted), so the replay is at least once.
    if os.environ.get(CRASH_BEFORE_PUBLISH_ENV) == "1":
        logger.warning("replay crash hook: SIGKILL after the claim, before the publish")
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        if is_event:
            body, headers, properties = _replay_event_message(dead_letter, replay_id=str(replay.id))
            _publish_event(queue=dead_letter.queue, body=body, headers=headers, properties=properties)
        else:
            body, headers, properties = _replay_message(dead_letter, replay_id=str(replay.id), new_task_id=new_task_id)
            _publish(queue=dead_letter.queue, body=body, headers=headers, properties=properties)
    except Exception as exc:  # any broker error is reported, not raised as a 500
        logger.exception("replay publish failed", extra={"dead_letter_id": str(dead_letter.id)})
        DeadLetterReplay.objects.filter(id=replay.id).update(
            status=ReplayStatus.PUBLISH_FAILED, error=str(exc)[:10_000], finished_at=timezone.now()
        )
        DeadLetter.objects.filter(id=dead_letter.id, status=DeadLetterStatus.REPLAYED).update(status=previous_status)
        replay.refresh_from_db()
        return replay
    DeadLetterReplay.objects.filter(id=replay.id, status=ReplayStatus.PENDING).update(status=ReplayStatus.PUBLISHED)
    replay.refresh_from_db()
    return replay


def dead_letter_replay_bulk(
    *, queryset: QuerySet[DeadLetter], user: Any | None, force: bool = False, limit: int = 100
) -> dict[str, Any]:
    """Replay every matching dead letter (at most ``limit``); already replayed ones are skipped unless forced."""
    if not force:
        queryset = queryset.filter(status=DeadLetterStatus.NEW)
    ids = list(queryset.order_by("created_at").values_list("id", flat=True)[: limit + 1])
    truncated = len(ids) > limit
    replayed, skipped, failed = [], [], []
    for dead_letter_id in ids[:limit]:
        try:
            replay = dead_letter_replay(dead_letter_id=dead_letter_id, user=user, force=force)
        except (Conflict, NotFound):
            skipped.append(str(dead_letter_id))
            continue
        (failed if replay.status == ReplayStatus.PUBLISH_FAILED else replayed).append(str(dead_letter_id))
    return {"replayed": replayed, "skipped": skipped, "failed": failed, "truncated": truncated}


def dead_letter_replay_finish(*, replay_id: str, status: str, error: str | None = None) -> None:
    """Called by the base class when a replayed task ends (success); the archiver records re-deaths."""
    if status not in ReplayStatus.values:
        raise ValidationFailed("Unknown replay status.", details={"status": status})
    DeadLetterReplay.objects.filter(id=replay_id).exclude(status=ReplayStatus.DEAD_LETTERED).update(
        status=status,
        error=error or "",
        finished_at=timezone.now(),
    )


def dead_letter_discard(*, dead_letter_id: Any, user: Any | None) -> DeadLetter:
    updated = DeadLetter.objects.filter(id=dead_letter_id).update(
        status=DeadLetterStatus.DISCARDED, updated_at=timezone.now()
    )
    if not updated:
        raise NotFound("Dead letter not found.", details={"id": str(dead_letter_id)})
    logger.info(
        "dead letter discarded", extra={"dead_letter_id": str(dead_letter_id), "by": getattr(user, "username", None)}
    )
    return DeadLetter.objects.get(id=dead_letter_id)


def dead_letter_purge(*, older_than: datetime) -> int:
    """Retention: delete dead letters (and their replays) created before ``older_than``; returns rows deleted."""
    if timezone.is_naive(older_than):
        raise ValidationFailed("older_than must be timezone-aware.")
    with transaction.atomic():
        count, _ = DeadLetter.objects.filter(created_at__lt=older_than).delete()
        TaskFailure.objects.filter(created_at__lt=older_than).delete()
    return count


# --- canary --------------------------------------------------------------------


def canary_run_create(*, mode: str, user: Any | None) -> CanaryRun:
    """Create the run and send ``ops.canary`` once the row is committed."""
    if mode not in CanaryMode.values:
        raise ValidationFailed("Unknown canary mode.", details={"mode": [f"one of {', '.join(CanaryMode.values)}"]})
    task_id = str(uuid.uuid4())
    with transaction.atomic():
        run = CanaryRun.objects.create(
            mode=mode, task_id=task_id, requested_by=user if getattr(user, "pk", None) else None
        )

    def send() -> None:
        message = build_task_message(
            CANARY_TASK_NAME,
            {"canary_id": str(run.id), "mode": mode},
            correlation_id=None,
            task_id=task_id,
            queue=Queue.MAINTENANCE,
        )
        publish_confirmed(message.outgoing(), declare=declare_topology)

    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(send)
        return run
    try:
        send()
    except Exception as exc:  # a broker outage is the operator's answer, not a 500
        logger.exception("canary publish failed", extra={"canary_id": str(run.id)})
        raise ApplicationError(
            "The broker did not accept the canary task.",
            code="publish_failed",
            status_code=503,
            details={"canary_id": str(run.id), "error": str(exc)},
        ) from exc
    return run


def canary_run_purge(*, older_than: datetime) -> int:
    """Retention: delete canary runs created before ``older_than``, whatever their status; returns rows deleted.

    A run still pending or running after the retention window (a week by
    default) has long been dead-lettered or lost; its dead letter, if any, has
    its own retention.
    """
    if timezone.is_naive(older_than):
        raise ValidationFailed("older_than must be timezone-aware.")
    count, _ = CanaryRun.objects.filter(created_at__lt=older_than).delete()
    return count


def canary_run_mark(*, canary_id: str, status: str, attempts: int | None = None) -> None:
    now = timezone.now()
    fields: dict[str, Any] = {"status": status, "updated_at": now}
    if status == CanaryStatus.RUNNING:
        fields["started_at"] = now
    else:
        fields["finished_at"] = now
    if attempts is not None:
        fields["attempts"] = attempts
    # A dead-lettered run stays dead-lettered (the archiver may come first).
    CanaryRun.objects.filter(id=canary_id).exclude(status=CanaryStatus.DEAD_LETTERED).update(**fields)
