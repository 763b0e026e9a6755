"""Real processes for the batch integration tests: beat, celery workers, run_job."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from kombu import Connection

REPO_ROOT = Path(__file__).resolve().parents[3]


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.2, message: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@dataclass
class Proc:
    name: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill9(self) -> None:
        for pid in self.children():
            _kill(pid)
        _kill(self.process.pid)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        children = self.children()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in children:
            _kill(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Starter:
    def __init__(self, log_dir: Path, env_factory: Callable[..., dict[str, str]]) -> None:
        self.log_dir = log_dir
        self.env_factory = env_factory
        self.started: list[Proc] = []

    def __call__(self, name: str, cmd: list[str], **env: str) -> Proc:
        log_path = self.log_dir / f"{name}-{len(self.started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=self.env_factory(**env), stdout=log, stderr=subprocess.STDOUT
            )
        proc = Proc(name=name, process=process, log_path=log_path)
        self.started.append(proc)
        return proc

    def beat(self, name: str, **env: str) -> Proc:
        return self(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "project",
                "beat",
                "-S",
                "workers.batch.beat:SingleBeatScheduler",
                "--max-interval",
                "1",
                "--loglevel",
                "INFO",
                "-s",
                str(self.log_dir / f"{name}-schedule"),
            ],
            **env,
        )

    def worker(self, name: str, queues: str, *, pool: str = "prefork") -> Proc:
        return self(
            name,
            [
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
                "--pool",
                pool,
                "--concurrency",
                "1",
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "INFO",
            ],
        )

    def run_job(self, name: str, job: str, **params: Any) -> Proc:
        cmd = [sys.executable, "manage.py", "run_job", job, "--no-progress"]
        for key, value in params.items():
            cmd += ["--param", f"{key}={value}"]
        return self(name, cmd)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()


@pytest.fixture
def processes(transactional_db, tmp_path, subprocess_env) -> Iterator[Starter]:
    starter = Starter(tmp_path, subprocess_env)
    yield starter
    starter.stop_all()


@pytest.fixture
def broker() -> Iterator[Connection]:
    """A connection to this run's vhost with the work queues declared and empty."""
    from apps.eventbus.queues import declare_topology

    with Connection(settings.BROKER_URL) as conn:
        channel = conn.default_channel
        declare_topology(channel)
        for queue in ("maintenance", "ai.batch"):
            channel.queue_purge(queue)
        yield conn


def drain(conn: Connection, queue: str) -> list[dict[str, Any]]:
    """Take every message now in ``queue``: task name, kwargs, sender (``origin``) and headers."""
    channel = conn.default_channel
    out: list[dict[str, Any]] = []
    while True:
        message = channel.basic_get(queue, no_ack=True)
        if message is None:
            return out
        headers = dict(message.headers or {})
        body = json.loads(message.body)
        out.append(
            {"task": headers.get("task"), "kwargs": body[1], "origin": headers.get("origin"), "headers": headers}
        )
