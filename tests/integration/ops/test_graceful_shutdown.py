"""Workers on SIGTERM: a running task finishes (warm shutdown); one cut short by a kill is handed back (acks_late)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apps.ops.fleet import figures as fleet
from tests.support.haproxy import REPO_ROOT

pytestmark = [pytest.mark.integration]


def _wait(predicate: Callable[[], object], *, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def start_worker(transactional_db, subprocess_env, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    started: list[subprocess.Popen] = []

    def start(name: str, *, slow_seconds: float) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "project",
                "worker",
                "-Q",
                "maintenance",
                "-n",
                f"{name}@%h",
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "WARNING",
            ],
            cwd=REPO_ROOT,
            env=subprocess_env(CANARY_SLOW_SECONDS=str(slow_seconds)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we can kill it whole
        )
        log.close()
        started.append(proc)
        _wait(lambda: fleet.broker_queue_counts(["maintenance"])[0].consumers, timeout=90, what=f"{name} consuming")
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _status(run_id: object) -> str:
    from apps.ops.models import CanaryRun

    return CanaryRun.objects.get(pk=run_id).status


def test_sigterm_lets_the_running_task_finish(start_worker):
    from apps.ops.deadletters.services import canary_run_create

    worker = start_worker("graceful", slow_seconds=3)
    run = canary_run_create(mode="slow", user=None)
    _wait(lambda: _status(run.pk) == "running", what="the slow canary to start")

    worker.send_signal(signal.SIGTERM)  # warm shutdown: stop consuming, finish what runs

    assert worker.wait(timeout=60) == 0
    assert _status(run.pk) == "succeeded"


def test_a_task_cut_short_by_a_kill_is_handed_back_and_completed_elsewhere(start_worker):
    from apps.ops.deadletters.services import canary_run_create
    from apps.ops.models import CanaryRun

    first = start_worker("cut-short", slow_seconds=30)
    run = canary_run_create(mode="slow", user=None)
    _wait(lambda: _status(run.pk) == "running", what="the slow canary to start")

    # What an orchestrator does when the grace period ends: SIGTERM, then SIGKILL to everything.
    first.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert _status(run.pk) == "running"

    start_worker("takes-over", slow_seconds=0.2)

    _wait(lambda: _status(run.pk) == "succeeded", timeout=60, what="the handed-back task to complete")
    assert CanaryRun.objects.get(pk=run.pk).attempts >= 2
