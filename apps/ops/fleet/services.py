"""Fleet control, each action audited (a ``FleetAction`` row): revoke a task, pause, resume or purge a queue.

Over the broker's control channel (Celery's pidbox broadcast) the running
workers act at once; what must outlive them is in PostgreSQL: a paused queue
is a ``PausedQueue`` row that workers read when they start, and a revoke's
audit row is re-applied by a starting worker (``consumption.py``).

- **Revoke** (``terminate`` optional): every worker drops the task when it
  reaches it (queued, prefetched, or still in delayed delivery); with
  ``terminate`` a running one is signalled too. A revoked id is remembered
  for three hours (Celery's own horizon).
- **Pause**: the queue's consumers are cancelled; messages stay in the queue,
  in order. Running tasks finish, and so do the few a worker had already
  prefetched (at most its prefetch count per node: ``inspect reserved``).
- **Resume**: the row goes and the workers started for the queue consume it again.
- **Purge**: ready messages are deleted, only when ``confirm`` repeats the queue
  name. Messages a worker holds unacked and those still in delayed delivery
  are not ready and survive.

Only the work queues (``apps.eventbus.queues.Queue``) can be paused or purged:
subscriber and dead-letter queues have their own tools.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from django.db import IntegrityError, transaction

from apps.common.exceptions import ApplicationError, Conflict, ValidationFailed
from apps.eventbus.queues import Queue
from apps.ops.fleet import delayed
from apps.ops.models import FleetAction, FleetActionKind, PausedQueue

logger = logging.getLogger(__name__)

# Seconds to collect the workers' replies to a control broadcast (they are listed on the audit row).
REPLY_TIMEOUT_S = 1.0
TASK_ID_MAX = 200
TERMINATE_SIGNALS = ("SIGTERM", "SIGKILL", "SIGINT")


def broker_unavailable(exc: Exception, consequence: str = "nothing was changed on the workers") -> ApplicationError:
    """The 503 every fleet read and action answers when the broker does not."""
    return ApplicationError(
        f"The message broker did not answer; {consequence}.",
        code="broker_unavailable",
        status_code=503,
        details={"error": str(exc)[:300]},
    )


def _work_queue(queue: str) -> str:
    if queue not in {q.value for q in Queue}:
        raise ValidationFailed("Not a work queue.", details={"queue": [f"one of {', '.join(q.value for q in Queue)}"]})
    return queue


def _replies(replies: list[dict[str, Any]] | None) -> dict[str, Any]:
    """``[{"node": {"ok": "..."}}]`` as ``{"node": "..."}`` for the audit row."""
    out: dict[str, Any] = {}
    for reply in replies or []:
        for node, answer in reply.items():
            out[node] = answer.get("ok") or answer.get("error") if isinstance(answer, dict) else answer
    return out


def _audit(*, action: str, target: str, user: Any | None, params: dict, result: dict) -> FleetAction:
    row = FleetAction.objects.create(
        action=action,
        target=target,
        requested_by=user if getattr(user, "is_authenticated", False) else None,
        params=params,
        result=result,
    )
    logger.info(
        "fleet %s %s",
        action,
        target,
        extra={"fleet_action_id": str(row.id), "by": getattr(user, "username", None), **params},
    )
    return row


def task_revoke(*, task_id: str, user: Any | None, terminate: bool = False, signal: str = "SIGTERM") -> FleetAction:
    """Revoke ``task_id`` on every worker (and, with ``terminate``, signal it if it is running)."""
    task_id = (task_id or "").strip()
    if not task_id or len(task_id) > TASK_ID_MAX:
        raise ValidationFailed("A task id is required.", details={"task_id": [f"1 to {TASK_ID_MAX} characters"]})
    if signal not in TERMINATE_SIGNALS:
        raise ValidationFailed("Unknown signal.", details={"signal": [f"one of {', '.join(TERMINATE_SIGNALS)}"]})
    params = {"terminate": terminate, "signal": signal if terminate else None}
    # Audited first: a worker starting while the broadcast is under way reads the row (consumption.py).
    row = _audit(action=FleetActionKind.REVOKE, target=task_id, user=user, params=params, result={})
    try:
        replies = current_app.control.revoke(
            task_id, terminate=terminate, signal=signal, reply=True, timeout=REPLY_TIMEOUT_S
        )
    except Exception as exc:
        FleetAction.objects.filter(id=row.id).update(result={"error": str(exc)[:500]})
        raise broker_unavailable(exc) from exc
    delayed.delayed_forget(task_id)
    row.result = {"workers": _replies(replies)}
    FleetAction.objects.filter(id=row.id).update(result=row.result)
    return row


def queue_pause(*, queue: str, user: Any | None, reason: str = "") -> FleetAction:
    """Stop every worker consuming ``queue`` until it is resumed, across worker restarts."""
    queue = _work_queue(queue)
    try:
        with transaction.atomic():
            PausedQueue.objects.create(
                queue=queue, paused_by=user if user and user.is_authenticated else None, reason=reason
            )
    except IntegrityError as exc:
        raise Conflict("The queue is already paused.", details={"queue": queue}) from exc
    row = _audit(action=FleetActionKind.PAUSE, target=queue, user=user, params={"reason": reason}, result={})
    try:
        replies = current_app.control.cancel_consumer(queue, reply=True, timeout=REPLY_TIMEOUT_S)
    except Exception as exc:
        # Undone: running workers were not told, so the queue is not paused.
        PausedQueue.objects.filter(queue=queue).delete()
        FleetAction.objects.filter(id=row.id).update(result={"error": str(exc)[:500]})
        raise broker_unavailable(exc) from exc
    row.result = {"workers": _replies(replies)}
    FleetAction.objects.filter(id=row.id).update(result=row.result)
    return row


def queue_resume(*, queue: str, user: Any | None) -> FleetAction:
    """Consume ``queue`` again on the workers started for it."""
    queue = _work_queue(queue)
    paused = PausedQueue.objects.filter(queue=queue).first()
    if paused is None or not PausedQueue.objects.filter(id=paused.id).delete()[0]:
        raise Conflict("The queue is not paused.", details={"queue": queue})
    row = _audit(action=FleetActionKind.RESUME, target=queue, user=user, params={}, result={})
    try:
        replies = current_app.control.broadcast(
            "ops_queue_resume", arguments={"queue": queue}, reply=True, timeout=REPLY_TIMEOUT_S
        )
    except Exception as exc:
        # Undone: the workers still do not consume it, so it stays paused.
        PausedQueue.objects.get_or_create(
            queue=queue, defaults={"paused_by": paused.paused_by, "reason": paused.reason}
        )
        FleetAction.objects.filter(id=row.id).update(result={"error": str(exc)[:500]})
        raise broker_unavailable(exc) from exc
    row.result = {"workers": _replies(replies)}
    FleetAction.objects.filter(id=row.id).update(result=row.result)
    return row


def queue_purge(*, queue: str, confirm: str, user: Any | None) -> FleetAction:
    """Delete the ready messages of ``queue``; ``confirm`` must repeat its name."""
    queue = _work_queue(queue)
    if confirm != queue:
        raise ValidationFailed(
            "Purging deletes every waiting message: repeat the queue name in 'confirm'.",
            code="confirmation_required",
            details={"confirm": [f"must be {queue!r}"]},
        )
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            purged = int(conn.default_channel.queue_purge(queue) or 0)
    except Exception as exc:
        raise broker_unavailable(exc) from exc
    delayed.delayed_forget_queue(queue)
    return _audit(action=FleetActionKind.PURGE, target=queue, user=user, params={}, result={"purged": purged})
