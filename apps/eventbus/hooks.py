"""What the operations layer does with a message's outcome: callbacks it installs at startup.

The task base class (``workers/base.py``) and the subscriber runner report a
dead-lettered message (why it was refused, for the archiver to join onto its
``DeadLetter`` row) and the end of a dead-letter replay (the audit row); the
base class also reports each run's start and duration, measured once there,
to the fleet figures.
Those records belong to ``apps.ops``, the top layer; ``apps/ops/apps.py``
installs its services here, so no lower layer imports it. Unset (a process
without the ops app), they are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class MessageHooks:
    # failure_recorded(task_id=, task_name=, queue=, exception_class=, exception_message=,
    #                  traceback=, attempts=, reason=): the ops services' task_failure_record.
    failure_recorded: Callable[..., None] | None = None
    # replay_finished(replay_id=, status=, error=None): the ops services' dead_letter_replay_finish.
    replay_finished: Callable[..., None] | None = None
    # task_started(queue=, published_at=) and task_finished(queue=, duration=), once per run of a
    # task (any outcome): the fleet's per-queue counters (apps/ops/fleet/figures.py).
    task_started: Callable[..., None] | None = None
    task_finished: Callable[..., None] | None = None


hooks = MessageHooks()
