"""Celery signal handlers: the publish stamp the fleet's waits are measured from, dead processes,
and the ledger of tasks waiting out a countdown (``delayed.py``).

A run is timed once, by the task base class (``workers/base.py``): its counts
and durations by outcome go to Prometheus, and its start and duration to the
fleet counters through the message hooks (``apps/ops/apps.py`` installs
``figures.task_started`` and ``figures.task_finished``).

Connected once per process from ``OpsConfig.ready()`` (Celery's Django fixup
runs ``django.setup()`` in every worker), which also connects the paused-queue
and revoke handlers of ``consumption.py``. Handlers never raise: observability
must not fail a task.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals

from apps.common.metrics import mark_process_dead
from apps.ops.fleet import (
    consumption,  # noqa: F401 - paused queues and revokes at worker start, the resume control command
    delayed,
)
from apps.ops.fleet import figures as fleet

logger = logging.getLogger(__name__)


@signals.before_task_publish.connect(weak=False)
def _stamp(headers: dict[str, Any] | None = None, exchange: Any = "", routing_key: str = "", **_: Any) -> None:
    if headers is not None:
        fleet.stamp_published_at(headers)
        if headers.get("eta"):
            name = getattr(exchange, "name", exchange) or ""
            delayed.delayed_record(headers=headers, exchange=str(name), routing_key=routing_key or "")


@signals.task_prerun.connect(weak=False)
def _delayed_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    # Only a request that carried an ETA can be in the ledger: no Redis call for the others.
    if task_id and getattr(getattr(task, "request", None), "eta", None):
        delayed.delayed_forget(task_id)


@signals.task_revoked.connect(weak=False)
def _delayed_revoked(request: Any = None, **_: Any) -> None:
    task_id = getattr(request, "id", None)
    if task_id:
        delayed.delayed_forget(task_id)


@signals.worker_process_shutdown.connect(weak=False)
def _child_exit(pid: int | None = None, **_: Any) -> None:
    mark_process_dead(pid or os.getpid())
