"""A job whose lock connection dies mid-run stops; a second runner takes over; no chunk commits twice.

Real PostgreSQL: the first runner's backend is killed with ``pg_terminate_backend``
(what a PostgreSQL restart or a cut network does to it), a second runner then
gets the lock and resumes the run. The first must neither commit another chunk
nor write over the run the second now owns, and must end with ``JobLockLost``.
The chunk ledger is a table the steps write inside their chunk's transaction:
a chunk committed twice, or by two runners, shows there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from apps.batch.jobs import Job, JobLockLost, Param, Step, job_execute, register
from apps.batch.models import JobRun

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LEDGER = "test_batch_lock_loss_chunks"
CHUNKS = 6
# Where the first runner stops for the kill: its third chunk.
HOLD_AT = 2


class Gate:
    """The first runner parks here until the test has killed its connection and the second runner is done."""

    def __init__(self) -> None:
        self.where = ""
        self.reached = threading.Event()
        self.release = threading.Event()
        self.backend_pid: int | None = None


GATE = Gate()


@register
class LockLossJob(Job):
    name = "test_lock_loss"
    queue = "ai.batch"
    params = {"upto": Param(int, CHUNKS)}

    def step(self, *, params: dict[str, Any], checkpoint: dict[str, Any], run: JobRun) -> Step:
        chunk = int(checkpoint.get("next", 0))
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {LEDGER} (chunk, runner) VALUES (%s, %s)", [chunk, run.worker])  # noqa: S608
            if GATE.backend_pid is None and run.worker == "r1":
                cursor.execute("SELECT pg_backend_pid()")
                GATE.backend_pid = cursor.fetchone()[0]
        if run.worker == "r1" and chunk == HOLD_AT and GATE.where == "mid_chunk":
            GATE.reached.set()
            assert GATE.release.wait(30), "the test never released the first runner"
        return Step(done=1, checkpoint={"next": chunk + 1}, finished=chunk + 1 >= params["upto"])


@pytest.fixture
def ledger() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {LEDGER} (chunk int NOT NULL, runner text NOT NULL)")
        cursor.execute(f"TRUNCATE {LEDGER}")
    GATE.__init__()
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {LEDGER}")


def _committed() -> list[tuple[int, str]]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT chunk, runner FROM {LEDGER} ORDER BY chunk, runner")  # noqa: S608
        return [(row[0], row[1]) for row in cursor.fetchall()]


def _backend_alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone()[0] > 0


def _wait(predicate: Any, *, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.02)


def _runner(worker: str, outcome: dict[str, Any], on_progress: Any = None) -> threading.Thread:
    def target() -> None:
        try:
            outcome["run"] = job_execute(name="test_lock_loss", params={}, worker=worker, on_progress=on_progress)
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test asserts on
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=target, name=f"runner-{worker}", daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("where", ["mid_chunk", "between_chunks"])
def test_a_runner_that_loses_its_lock_connection_stops_and_a_second_one_finishes_the_run(ledger, where):
    GATE.where = where

    def between_chunks(run: JobRun) -> None:
        # After the commit of chunk HOLD_AT - 1: the kill lands while no transaction is open.
        if where == "between_chunks" and run.worker == "r1" and run.progress_done == HOLD_AT:
            GATE.reached.set()
            assert GATE.release.wait(30), "the test never released the first runner"

    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    t1 = _runner("r1", first, between_chunks)
    assert GATE.reached.wait(30), "the first runner never reached its third chunk"
    assert GATE.backend_pid is not None

    # When: its lock connection is killed, and a second runner starts meanwhile
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [GATE.backend_pid])
        assert cursor.fetchone()[0]
    _wait(lambda: not _backend_alive(GATE.backend_pid), timeout=10, message="the killed backend to go")
    t2 = _runner("r2", second)
    t2.join(30)
    assert not t2.is_alive(), "the second runner did not finish"
    assert "error" not in second, f"the second runner failed: {second.get('error')!r}"
    # Then the first one, released, finds its lock gone
    GATE.release.set()
    t1.join(30)
    assert not t1.is_alive(), "the first runner did not end"

    # Then: the run is the second runner's, untouched by the first
    run = JobRun.objects.get(pk=second["run"].pk)
    assert run.status == JobRun.Status.SUCCEEDED, f"the run is {run.status}: {run.error[:300]}"
    assert run.resume_count == 1 and run.resumed_from == [HOLD_AT]
    assert (run.progress_done, run.checkpoint) == (CHUNKS, {"next": CHUNKS})
    # Every chunk committed exactly once: the first runner's before the kill, the second's after.
    assert _committed() == [(c, "r1") for c in range(HOLD_AT)] + [(c, "r2") for c in range(HOLD_AT, CHUNKS)]
    assert not JobRun.objects.filter(job_name="test_lock_loss", status=JobRun.Status.RUNNING).exists()
    # And the first stopped with a clear status of its own
    assert isinstance(first.get("error"), JobLockLost), f"first runner ended with {first!r}"
