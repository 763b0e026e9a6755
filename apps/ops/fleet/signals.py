"""Celery signal handlers: the publish stamp the fleet's waits are measured from, and dead processes.

A run is timed once, by the task base class (``workers/base.py``): its counts
and durations by outcome go to Prometheus, and its start and duration to the
fleet counters through the message hooks (``apps/ops/apps.py`` installs
``figures.task_started`` and ``figures.task_finished``).

Connected once per process from ``OpsConfig.ready()`` (Celery's Django fixup
runs ``django.setup()`` in every worker). Handlers never raise: observability
must not fail a task.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals

from apps.common.metrics import mark_process_dead
from apps.ops.fleet import figures as fleet

logger = logging.getLogger(__name__)


@signals.before_task_publish.connect(weak=False)
def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        fleet.stamp_published_at(headers)


@signals.worker_process_shutdown.connect(weak=False)
def _child_exit(pid: int | None = None, **_: Any) -> None:
    mark_process_dead(pid or os.getpid())
