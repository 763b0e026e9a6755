"""Exactly one active beat: the database scheduler, sending only while it holds a PostgreSQL lock.

Run it as ``celery -A project beat -S workers.batch.beat:SingleBeatScheduler``.
Any number of beat processes may run (a standby for failover, or a deploy
that briefly overlaps the old and new one); only the one holding the session
advisory lock ``pg_try_advisory_lock(BEAT_LOCK)`` sends tasks. The others
poll for the lock every ``STANDBY_POLL_S`` seconds and send nothing.

The lock lives on a dedicated connection (not Django's, which the scheduler
closes and reopens through ``close_old_connections``). PostgreSQL drops it
when that connection ends: the active beat exiting, being killed, or losing
its network. The active beat checks its connection on every tick and stops
sending the moment the check fails, so two beats never send together; a
standby takes over within ``STANDBY_POLL_S`` plus the backend's exit.

On taking over, the new leader re-reads the schedule (``last_run_at``
included) from the database. ``sync_every_tasks = 1`` makes the leader write
``last_run_at`` right after each send, so a takeover does not re-send what the
old leader already sent. That write is one ``UPDATE`` of beat's own two
columns: django-celery-beat's entry re-reads the row and saves all of it, so an
operator's edit landing in between (disabling the task, new kwargs) was
written back over, and a task turned off in admin kept firing.

A database outage (a PostgreSQL restart) does not end beat: the tick that
fails gives up the lock, waits ``STANDBY_POLL_S`` and tries again; the lock is
taken again and the schedule re-read once PostgreSQL answers.

What beat reports (``workers/batch/metrics.py`` for the skip reasons): runs
sent (``ce_beat_runs_sent_total{job}``), whether it leads (``ce_beat_leader``),
and every scheduled run that did not happen: a run sent late after more than
one of its times passed (``missed_window``: no beat held the lock, PostgreSQL
was down, beat was down; the times in between are not sent again), the times
of a disabled schedule (``disabled``), and a send the broker refused
(``send_failed``). A standby beat sends nothing and skips nothing: the leader
sends, and the time no beat led shows up as ``missed_window`` on the next send.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from celery.schedules import BaseSchedule, crontab
from celery.schedules import schedule as interval_schedule
from celery.utils.time import maybe_make_aware
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections, connection
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from apps.common.metrics import BEAT_LEADER, BEAT_RUNS_SENT
from workers.batch.metrics import job_run_skipped
from workers.batch.tasks import job_for_task

logger = logging.getLogger(__name__)

# Two-int advisory key: ASCII "BEAT" and 1 (the job framework uses "JOBS").
BEAT_LOCK = (0x42454154, 1)
STANDBY_POLL_S = 2.0
# How often the leader looks whether a disabled schedule's time passed (seconds).
DISABLED_CHECK_S = 1.0
# Run times counted between two sends at most: a schedule of seconds left off
# for days must not make one tick iterate millions of times.
MAX_COUNTED_RUNS = 10_000


def _next_run_time(schedule: BaseSchedule, after: datetime) -> datetime | None:
    """The first run time of ``schedule`` after ``after`` (None when it cannot be told)."""
    if isinstance(schedule, interval_schedule):
        return after + schedule.run_every
    if isinstance(schedule, crontab):
        start, delta, _ = schedule.remaining_delta(after)
        return start + delta
    return None


def run_times_between(schedule: BaseSchedule, since: datetime, until: datetime) -> tuple[int, datetime]:
    """How many of ``schedule``'s run times fall in ``(since, until]``, and the last of them (or ``since``).

    Interval and crontab schedules; for another kind (solar) at most one, when it is due.
    """
    if until <= since:
        return 0, since
    if isinstance(schedule, interval_schedule):
        every = schedule.run_every
        if every <= timedelta(0):
            return 0, since
        count = min(int((until - since) / every), MAX_COUNTED_RUNS)
        return count, since + count * every
    if not isinstance(schedule, crontab):
        return (1, until) if schedule.remaining_estimate(since) <= timedelta(0) else (0, since)
    count, last = 0, since
    while count < MAX_COUNTED_RUNS:
        following = _next_run_time(schedule, last)
        if following is None or following <= last or following > until:
            break
        count, last = count + 1, following
    return count, last


def schedule_interval_seconds(schedule: BaseSchedule) -> float | None:
    """Seconds between two runs: the interval, or the gap between a crontab's next two run times."""
    if isinstance(schedule, interval_schedule):
        return schedule.run_every.total_seconds() or None
    first = _next_run_time(schedule, schedule.now())
    second = _next_run_time(schedule, first) if first is not None else None
    if first is None or second is None:
        return None
    gap = (second - first).total_seconds()
    return gap if gap > 0 else None


def schedule_intervals() -> dict[str, float]:
    """Each job's (or other task's) interval over its enabled beat schedules, the shortest when several."""
    from django_celery_beat.models import PeriodicTask

    intervals: dict[str, float] = {}
    rows = PeriodicTask.objects.filter(enabled=True, one_off=False, clocked__isnull=True).select_related(
        "interval", "crontab", "solar"
    )
    for model in rows:
        try:
            seconds = schedule_interval_seconds(model.schedule)
        except Exception:  # one odd schedule must not hide the others
            logger.warning("beat: no interval for schedule", extra={"schedule": model.name}, exc_info=True)
            continue
        if seconds:
            job = job_for_task(model.task)
            intervals[job] = min(intervals.get(job, seconds), seconds)
    return intervals


@dataclass
class _Disabled:
    """A disabled schedule the leader watches: its run times after ``since`` are skipped runs."""

    job: str
    schedule: BaseSchedule
    since: datetime


def _lock_connection() -> psycopg.Connection:
    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=db.get("HOST") or "127.0.0.1",
        port=db.get("PORT") or 5432,
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        dbname=db["NAME"],
        autocommit=True,
        connect_timeout=int(db.get("OPTIONS", {}).get("connect_timeout", 5)),
        application_name="celery-beat-lock",
    )


class BookkeepingEntry(ModelEntry):
    def save(self) -> None:
        """Write only what beat owns (``last_run_at``, ``total_run_count``): an operator's concurrent
        edit of the row survives. No signal fires, so the schedule is not reloaded for it."""
        type(self.model)._default_manager.filter(pk=self.model.pk).update(
            last_run_at=self.model.last_run_at, total_run_count=self.model.total_run_count
        )


class SingleBeatScheduler(DatabaseScheduler):
    Entry = BookkeepingEntry

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock_conn: psycopg.Connection | None = None
        self.is_leader = False
        self._disabled: dict[str, _Disabled] = {}
        self._disabled_checked = 0.0
        BEAT_LEADER.set(0)
        # Persist last_run_at after every send (see the module docstring); a
        # class attribute would be overwritten by beat_sync_every in __init__.
        if kwargs.get("sync_every_tasks") is None:
            kwargs["sync_every_tasks"] = 1
        super().__init__(*args, **kwargs)

    def _drop_lock_connection(self) -> None:
        if self._lock_conn is not None:
            with contextlib.suppress(psycopg.Error):  # closing a broken connection
                self._lock_conn.close()
        self._lock_conn = None

    def hold_lock(self) -> bool:
        """True while this process holds the beat lock (taking it if free)."""
        try:
            if self._lock_conn is None or self._lock_conn.closed:
                self._lock_conn = _lock_connection()
                self.is_leader = False
            if self.is_leader:
                # The lock lives as long as this connection; a failed round
                # trip means it may be gone, so stop sending at once.
                self._lock_conn.execute("SELECT 1")
                return True
            row = self._lock_conn.execute("SELECT pg_try_advisory_lock(%s, %s)", BEAT_LOCK).fetchone()
            if row and row[0]:
                self.is_leader = True
                BEAT_LEADER.set(1)
                logger.info("beat: this instance holds the lock and sends the schedule")
                # Disabled schedules count from now: until now another beat led and counted.
                self._disabled = {}
                self._reload_schedule()
                return True
            return False
        except psycopg.Error:
            if self.is_leader:
                logger.warning("beat: lost the lock connection; standing by", exc_info=True)
            self._stand_by()
            return False

    def _stand_by(self) -> None:
        self.is_leader = False
        BEAT_LEADER.set(0)
        self._drop_lock_connection()

    def _reload_schedule(self) -> None:
        # Another beat may have sent tasks since this one read the schedule.
        self._schedule = self.all_as_schedule()
        self._heap = []
        self._heap_invalidated = True

    def all_as_schedule(self) -> dict[str, Any]:
        schedule = super().all_as_schedule()
        self._disabled_watch()
        return schedule

    def _disabled_watch(self) -> None:
        """Re-read the disabled schedules (with the enabled ones: when the schedule changed).

        One-off and clocked schedules are left out (django-celery-beat disables a one-off
        after its run), and so are expired ones (beat disabled them: their time is over).
        """
        now = self.app.now()
        watched: dict[str, _Disabled] = {}
        rows = self.Model.objects.filter(enabled=False, one_off=False, clocked__isnull=True).select_related(
            "interval", "crontab", "solar"
        )
        for model in rows:
            if model.expires is not None and model.expires <= now:
                continue
            try:
                schedule = model.schedule
            except Exception:  # a schedule row that no longer resolves is not watched
                logger.warning("beat: disabled schedule not watched", extra={"schedule": model.name}, exc_info=True)
                continue
            previous = self._disabled.get(model.name)
            since = previous.since if previous is not None else now
            watched[model.name] = _Disabled(job=job_for_task(model.task), schedule=schedule, since=since)
        self._disabled = watched

    def _disabled_runs_count(self) -> None:
        if time.monotonic() - self._disabled_checked < DISABLED_CHECK_S:
            return
        self._disabled_checked = time.monotonic()
        now = self.app.now()
        for name, watched in self._disabled.items():
            try:
                count, watched.since = run_times_between(watched.schedule, watched.since, now)
            except Exception:  # counting must never stop beat
                logger.warning("beat: could not count a disabled schedule's runs", exc_info=True)
                continue
            job_run_skipped(job=watched.job, reason="disabled", count=count, schedule=name)

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        """Send ``entry`` (still holding its previous ``last_run_at``); first count the run times it missed."""
        try:
            self._missed_runs_count(entry)
        except Exception:  # counting must never stop a send
            logger.warning("beat: could not count missed runs", extra={"schedule": entry.name}, exc_info=True)
        super().apply_entry(entry, producer=producer)

    def _missed_runs_count(self, entry: Any) -> None:
        model = entry.model
        now = maybe_make_aware(entry.default_now())
        # From the later of the last send and the schedule's last edit (a new interval
        # does not apply to the time before it) or its start time.
        since = max(
            maybe_make_aware(value) for value in (entry.last_run_at, model.date_changed, model.start_time) if value
        )
        # Beat wakes up to max_interval late: a run time inside that slack is this send's, not a missed one.
        count, _ = run_times_between(entry.schedule, since, now - timedelta(seconds=self.max_interval))
        if count > 1:
            job_run_skipped(
                job=job_for_task(entry.task),
                reason="missed_window",
                count=count - 1,
                schedule=entry.name,
                last_run_at=since.isoformat(),
            )

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        job = job_for_task(entry.task)
        try:
            result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        except Exception as exc:
            job_run_skipped(job=job, reason="send_failed", schedule=entry.name, error=repr(exc)[:500])
            raise
        BEAT_RUNS_SENT.labels(job=job).inc()
        return result

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if not self.hold_lock():
                return STANDBY_POLL_S
            delay = super().tick(*args, **kwargs)
            self._disabled_runs_count()
            return delay
        except (DatabaseError, InterfaceError):
            # A restarted or unreachable PostgreSQL: stand by (the lock went with the
            # connection) and try again; beat itself keeps running.
            logger.warning("beat: database unavailable; standing by and retrying", exc_info=True)
            self._stand_by()
            close_old_connections()
            connection.close()
            return STANDBY_POLL_S

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._stand_by()
