"""Inside a worker: paused queues stay paused across restarts, and revokes survive them too.

A pause is a ``PausedQueue`` row plus a ``cancel_consumer`` broadcast
(``apps/ops/fleet/services.py``). The broadcast reaches only the workers running
now; a worker started later reads the rows instead:

1. ``celeryd_after_setup`` (the ``-Q`` list is applied, nothing consumed yet):
   the worker remembers the queues it was started for and drops the paused
   ones from what it will consume;
2. ``worker_ready`` (consuming, its control channel up): it reads the rows
   again and cancels any queue paused in between, so a pause that raced a
   starting worker still holds.

Resume deletes the row and broadcasts :func:`ops_queue_resume`, a control
command of ours instead of Celery's ``add_consumer``: that would make *every*
worker consume the queue, while this one re-adds it only on the workers started
for it (``-Q``), so a realtime worker never starts taking batch work.

Revokes live in each worker's memory (``celery.worker.state.revoked``); at
``worker_ready`` a worker adds those audited in the last :data:`REVOKE_REMEMBER_S`,
so a restart does not let a revoked, still-queued task run.

If the database cannot be read at start, the worker logs an ALERT and consumes
its queues as started (a fleet that cannot read PostgreSQL cannot run tasks either).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import signals
from celery.worker.control import control_command
from django.utils import timezone

logger = logging.getLogger(__name__)

# Celery keeps revoked ids this long by default (celery.worker.state.REVOKE_EXPIRES, 3 h).
REVOKE_REMEMBER_S = 3 * 3600

# The queues this worker process was started for (-Q), before any pause dropped some.
_started_for: set[str] = set()


def paused_queue_names() -> set[str]:
    from apps.ops.models import PausedQueue

    return set(PausedQueue.objects.values_list("queue", flat=True))


def recent_revoked_ids(*, now: Any = None) -> list[str]:
    from apps.ops.models import FleetAction, FleetActionKind

    since = (now or timezone.now()) - timedelta(seconds=REVOKE_REMEMBER_S)
    # A revoke whose broadcast failed answered 503 "nothing changed": it is not applied later either.
    rows = FleetAction.objects.filter(action=FleetActionKind.REVOKE, created_at__gte=since)
    return list(rows.exclude(result__has_key="error").values_list("target", flat=True))


def _consumed(app: Any) -> set[str]:
    return set(app.amqp.queues.consume_from or ())


@signals.celeryd_after_setup.connect(weak=False)
def _drop_paused_queues(sender: Any = None, instance: Any = None, **_: Any) -> None:
    if instance is None:
        return
    queues = instance.app.amqp.queues
    _started_for.clear()
    _started_for.update(_consumed(instance.app))
    try:
        paused = paused_queue_names() & _started_for
    except Exception:
        logger.exception("ALERT paused queues unreadable at worker start; consuming every queue it was started for")
        return
    finally:
        _close_db()
    for name in sorted(paused):
        queues.deselect(name)
        logger.warning("queue %s is paused (ops.PausedQueue): not consuming it", name)


@signals.worker_ready.connect(weak=False)
def _recheck_on_ready(sender: Any = None, **_: Any) -> None:
    consumer = sender
    if consumer is None:
        return
    try:
        paused = paused_queue_names()
        revoked = recent_revoked_ids()
    except Exception:
        logger.exception("ALERT paused queues and revokes unreadable when the worker became ready")
        return
    finally:
        _close_db()
    for name in sorted(paused & _consumed(consumer.app)):
        consumer.cancel_task_queue(name)
        logger.warning("queue %s was paused while this worker started: consumer cancelled", name)
    if revoked:
        from celery.worker import state

        for task_id in revoked:
            state.revoked.add(task_id)


def _close_db() -> None:
    # The main process of a prefork worker forks its children after this: no
    # connection may be inherited by them.
    from django.db import connections

    connections.close_all()


@control_command(args=[("queue", str)], signature="<queue>")
def ops_queue_resume(state: Any, queue: str, **_: Any) -> dict[str, str]:
    """Consume ``queue`` again if this worker was started for it (ops fleet resume)."""
    if queue not in _started_for:
        return {"ok": f"not started for {queue}"}
    state.consumer.call_soon(state.consumer.add_task_queue, queue)
    return {"ok": f"consuming {queue} again"}
