"""Real ``celery worker`` and archiver processes for the worker integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from django.conf import settings

from tests.support.processes import REPO_ROOT, child_env

PROBE_MODULE = "tests.integration.workers.probe_tasks"


def wait_for(
    predicate: Callable[[], object], *, timeout: float = 30.0, interval: float = 0.1, message: str = "condition"
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def probe_key(*parts: str) -> str:
    return ":".join((settings.REDIS_KEY_PREFIX, "probe", *parts))


@pytest.fixture
def rds() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    yield client
    client.close()


@dataclass
class Proc:
    name: str
    process: subprocess.Popen
    log_path: Path
    extra_pids: list[int] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        pids = self.children()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                # Warm shutdown is quick when idle; a worker cut off from its
                # broker may hang on it, and the test is over anyway.
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _env(**overrides: str) -> dict[str, str]:
    """What ``subprocess_env`` gives, usable from module-scoped fixtures (after the test DB exists)."""
    return child_env(**overrides)


class Starter:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Proc] = []

    def __call__(
        self,
        kind: str,
        *,
        name: str = "w1",
        queues: str = "ai.batch",
        pool: str = "prefork",
        concurrency: int = 1,
        broker_url: str | None = None,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
    ) -> Proc:
        overrides = {"PROBE_WORKER_NAME": name, **(env or {})}
        if broker_url:
            overrides["TEST_BROKER_URL"] = broker_url
        environment = _env(**overrides)
        log_path = self.log_dir / f"{kind}-{name}-{len(self.started)}.log"
        if kind == "worker":
            cmd = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "project",
                "worker",
                "-Q",
                queues,
                "-n",
                f"{name}@%h",
                "-I",
                PROBE_MODULE,
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "WARNING",
            ]
        else:
            cmd = [sys.executable, "manage.py", "run_deadletter_archiver"]
        with log_path.open("wb") as log:
            process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        proc = Proc(name=name, process=process, log_path=log_path)
        self.started.append(proc)
        if kind == "worker" and wait_ready:
            self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: Proc) -> None:
        """Until the worker consumes (its worker_ready hook in probe_tasks sets a Redis key)."""
        client = redis.Redis.from_url(settings.REDIS_URL)
        try:
            wait_for(
                lambda: proc.process.poll() is not None or client.get(probe_key("ready", proc.name)),
                timeout=90,
                message=f"worker {proc.name} ready",
            )
            client.delete(probe_key("ready", proc.name))
        finally:
            client.close()
        assert proc.process.poll() is None, proc.log()

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()


@pytest.fixture
def processes(transactional_db, tmp_path) -> Iterator[Starter]:
    """Start worker/archiver processes for one test; every one is stopped at teardown."""
    starter = Starter(tmp_path)
    yield starter
    starter.stop_all()


@pytest.fixture(scope="module")
def fleet(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[dict[str, Proc]]:
    """One prefork worker on ai.batch and maintenance (2 processes) and the archiver, shared by a module."""
    starter = Starter(tmp_path_factory.mktemp("fleet"))
    with django_db_blocker.unblock():
        worker = starter(
            "worker", name="fleet", queues="ai.batch,maintenance", concurrency=2, env={"CANARY_SLOW_SECONDS": "1"}
        )
        archiver = starter("archiver", name="fleet-archiver")
    yield {"worker": worker, "archiver": archiver}
    starter.stop_all()
