"""What the batch jobs report: each attempt's outcome and run time, and every scheduled run that did not happen.

A skipped run is both logged (one structured line: the job, why, how many)
and counted (``ce_batch_job_runs_skipped_total{job,reason}``), so an operator
sees it on a dashboard and finds it in the logs. Where runs are skipped:

- ``already_running``: the job task found the job's lock held by a run still
  going (``JobAlreadyRunning``): a manual run, or the previous scheduled run;
- ``missed_window``: beat sent a run late, after more than one of its times
  had passed (no beat held the lock, the database was down, beat was down);
  the runs in between are not sent again, so each one counts;
- ``disabled``: a time of a disabled schedule passed (an operator turned it off);
- ``send_failed``: beat could not publish the run (the broker refused or was down).

Each job's last success is read from its ``JobRun`` rows at scrape time
(``apps.ops.metrics.ScrapeCollector``), not recorded here: it then survives
restarts and covers ``manage.py run_job`` too.
"""

from __future__ import annotations

import logging
from typing import Any

from apps.common.metrics import BATCH_JOB_DURATION, BATCH_JOB_RUNS, BATCH_JOB_RUNS_SKIPPED

logger = logging.getLogger("workers.batch")

SKIP_REASONS = ("already_running", "missed_window", "disabled", "send_failed")


def job_run_skipped(*, job: str, reason: str, count: int = 1, **context: Any) -> None:
    """Log and count ``count`` scheduled runs of ``job`` that did not happen, and why."""
    if count < 1:
        return
    BATCH_JOB_RUNS_SKIPPED.labels(job=job, reason=reason).inc(count)
    logger.warning(
        "batch job run skipped",
        extra={"event": "batch_job_run_skipped", "job": job, "reason": reason, "skipped": count, **context},
    )


def job_attempt_record(*, job: str, outcome: str, seconds: float) -> None:
    BATCH_JOB_DURATION.labels(job=job, outcome=outcome).observe(seconds)
    BATCH_JOB_RUNS.labels(job=job, outcome=outcome).inc()
