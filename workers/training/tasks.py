"""``training.train_next_action`` on ``ai.training``: the job runner does the work (see workers.training.train)."""

from __future__ import annotations

from typing import Any

from apps.eventbus.queues import Queue
from workers.base import task
from workers.batch.tasks import FAIL_ON, IGNORE, RETRY_ON, run_job_task


# One attempt at a time and few retries: a training round is minutes of CPU,
# and beat starts a fresh one tomorrow anyway.
@task(
    name="training.train_next_action",
    queue=Queue.AI_TRAINING,
    retry_on=RETRY_ON,
    fail_on=FAIL_ON,
    ignore=IGNORE,
    max_attempts=2,
    bind=True,
)
def train_next_action(
    self: Any, *, params: dict[str, Any] | None = None, trigger: str = "task", **kwargs: Any
) -> dict[str, Any]:
    return run_job_task(self, "train_next_action", params, trigger)
