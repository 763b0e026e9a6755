"""SingleBeatScheduler's lock, in process: one holder, standby sends nothing, takeover when the holder's
connection dies. (The real processes are in tests/integration/batch/test_beat.py.)"""

from __future__ import annotations

import time

import psycopg
from django.db import connection

from project.celery import app
from workers.batch.beat import STANDBY_POLL_S, SingleBeatScheduler


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_one_holder_standby_and_takeover_when_the_holder_connection_dies(db):
    first = SingleBeatScheduler(app=app, lazy=True)
    second = SingleBeatScheduler(app=app, lazy=True)
    try:
        assert first.sync_every_tasks == 1  # last_run_at written after every send
        assert first.hold_lock() is True and first.is_leader
        assert second.hold_lock() is False and not second.is_leader
        # A standby's tick sends nothing and comes back after the poll interval.
        assert second.tick() == STANDBY_POLL_S

        # When the holder's lock connection is cut (network loss, PostgreSQL restart)
        pid = first._lock_conn.info.backend_pid
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        # Then the holder notices on its next check and stops sending
        assert first.hold_lock() is False and not first.is_leader
        # And the standby takes over once PostgreSQL has released the lock
        _wait(lambda: second.hold_lock())
        assert second.is_leader
        assert first.hold_lock() is False  # reconnected, but now it is the standby
    finally:
        first.close()
        second.close()
    assert first._lock_conn is None and second._lock_conn is None


def test_lock_connection_is_not_django_s(db):
    scheduler = SingleBeatScheduler(app=app, lazy=True)
    try:
        scheduler.hold_lock()
        assert isinstance(scheduler._lock_conn, psycopg.Connection)
        assert scheduler._lock_conn.info.backend_pid != connection.connection.info.backend_pid
    finally:
        scheduler.close()
