"""Celery signal handlers: the fleet's per-queue counters, queue wait, the publish stamp.

Task counts and durations by outcome are recorded by the task base class
(``workers/base.py``, into ``apps.ops.metrics``), which knows the outcome in
its own terms (dead-lettered, ignored, ...); here only what the fleet report
needs regardless of the task: starts, finishes and busy time per queue.

Connected once per process from ``OpsConfig.ready()`` (Celery's Django fixup
runs ``django.setup()`` in every worker). Handlers never raise: observability
must not fail a task.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import signals
from django.conf import settings

from apps.common.metrics import TASK_QUEUE_WAIT
from apps.eventbus.messages import HEADER_PUBLISHED_AT
from apps.ops import fleet
from apps.ops.metrics import mark_process_dead

logger = logging.getLogger(__name__)

# task id -> (monotonic start, queue); a prefork child or a thread-pool worker runs several, so key by id.
_running: dict[str, tuple[float, str]] = {}


def task_queue(task: Any) -> str:
    info = getattr(task.request, "delivery_info", None) or {}
    return str(info.get("routing_key") or getattr(task, "queue", None) or "unknown")


@signals.before_task_publish.connect(weak=False)
def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        fleet.stamp_published_at(headers)


@signals.task_prerun.connect(weak=False)
def _prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    try:
        queue = task_queue(task)
        _running[task_id or ""] = (time.monotonic(), queue)
        published_at = getattr(task.request, "published_at", None)
        if published_at is None:
            published_at = (getattr(task.request, "headers", None) or {}).get(HEADER_PUBLISHED_AT)
        published = float(published_at) if published_at is not None else None
        if published is not None:
            TASK_QUEUE_WAIT.labels(queue=queue).observe(max(0.0, time.time() - published))
        fleet.task_started(queue=queue, published_at=published)
    except Exception:
        logger.warning("task_prerun metrics failed", exc_info=True)


@signals.task_postrun.connect(weak=False)
def _postrun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    try:
        started, queue = _running.pop(task_id or "", (None, task_queue(task)))
        duration = time.monotonic() - started if started is not None else 0.0
        fleet.task_finished(queue=queue, duration=duration)
    except Exception:
        logger.warning("task_postrun metrics failed", exc_info=True)


@signals.worker_process_shutdown.connect(weak=False)
def _child_exit(pid: int | None = None, **_: Any) -> None:
    mark_process_dead(pid or os.getpid())


@signals.worker_ready.connect(weak=False)
def _serve_metrics(**_: Any) -> None:
    port = settings.METRICS_PORT
    if port:
        from apps.ops.metrics import worker_metrics_serve

        worker_metrics_serve(port=port)
