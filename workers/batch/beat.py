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
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections, connection
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

logger = logging.getLogger(__name__)

# Two-int advisory key: ASCII "BEAT" and 1 (the job framework uses "JOBS").
BEAT_LOCK = (0x42454154, 1)
STANDBY_POLL_S = 2.0


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
                logger.info("beat: this instance holds the lock and sends the schedule")
                self._reload_schedule()
                return True
            return False
        except psycopg.Error:
            if self.is_leader:
                logger.warning("beat: lost the lock connection; standing by", exc_info=True)
            self.is_leader = False
            self._drop_lock_connection()
            return False

    def _reload_schedule(self) -> None:
        # Another beat may have sent tasks since this one read the schedule.
        self._schedule = self.all_as_schedule()
        self._heap = []
        self._heap_invalidated = True

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if not self.hold_lock():
                return STANDBY_POLL_S
            return super().tick(*args, **kwargs)
        except (DatabaseError, InterfaceError):
            # A restarted or unreachable PostgreSQL: stand by (the lock went with the
            # connection) and try again; beat itself keeps running.
            logger.warning("beat: database unavailable; standing by and retrying", exc_info=True)
            self.is_leader = False
            self._drop_lock_connection()
            close_old_connections()
            connection.close()
            return STANDBY_POLL_S

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._drop_lock_connection()
            self.is_leader = False
