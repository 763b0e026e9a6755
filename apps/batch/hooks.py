"""What the operations layer does for the batch jobs: callbacks it installs at startup.

The retention job purges dead letters and canary runs, and those belong to
``apps.ops``, the top layer; ``apps/ops/apps.py`` installs its purges here, so
neither this app nor ``workers/`` imports it. Unset (a process without the ops
app), the retention job has none of them to purge and reports 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class BatchHooks:
    # dead_letter_purge(older_than=) -> rows deleted: the ops services' dead_letter_purge.
    dead_letter_purge: Callable[..., int] | None = None
    # canary_run_purge(older_than=) -> rows deleted: the ops services' canary_run_purge.
    canary_run_purge: Callable[..., int] | None = None


hooks = BatchHooks()
