"""``ops.canary``: a synthetic task that proves the worker path end to end in production.

Modes: ``ok`` (succeeds), ``fail`` (a permanent error: straight to the DLQ),
``crash`` (the worker process dies mid-task on every delivery: redelivered
until the queue's delivery limit dead-letters it), ``slow`` (sleeps, then succeeds).
"""

from __future__ import annotations

import os
import time
from typing import Any

from django.conf import settings

from apps.eventbus.queues import Queue
from workers.base import PermanentError, task


class CanaryFailure(PermanentError):
    pass


# Three attempts: ``fail`` raises a PermanentError (dead-lettered at once, never retried);
# the budget is for a database outage met on the way (retried, like any task's).
@task(name="ops.canary", queue=Queue.MAINTENANCE, max_attempts=3)
def canary(*, canary_id: str, mode: str, **kwargs: Any) -> None:
    from apps.ops.deadletters.services import canary_run_mark

    attempt = canary.attempt_number()
    canary_run_mark(canary_id=canary_id, status="running", attempts=attempt)
    if mode == "fail":
        raise CanaryFailure(f"canary {canary_id} failed on purpose (mode=fail)")
    if mode == "crash":
        # Die without cleanup, as an OOM kill would: the broker requeues the
        # unacked message and counts the delivery.
        os._exit(70)
    if mode == "slow":
        time.sleep(settings.CANARY_SLOW_SECONDS)
    canary_run_mark(canary_id=canary_id, status="succeeded", attempts=attempt)
