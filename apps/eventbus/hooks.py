"""What the operations layer does with a message's outcome: callbacks it installs at startup.

The task base class (``workers/base.py``) and the subscriber runner report a
dead-lettered message (why it was refused, for the archiver to join onto its
``DeadLetter`` row) and the end of a dead-letter replay (the audit row).
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


hooks = MessageHooks()
