"""The AI path with real processes: ASGI server, outbox relay, event subscribers, realtime worker.

``ai_stack`` starts them once per module (the realtime worker loads the real
model, which takes a while on a busy 2-core box) and stops them at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import REPO_ROOT
from tests.support.processes import child_env
from tests.support.services import free_port, wait_for_port

# The worker loads all-MiniLM-L6-v2 before it reports ready; under load that
# has taken a minute here.
WORKER_READY_TIMEOUT = 240


def stack_env(**overrides: str) -> dict[str, str]:
    return child_env(**{"LOG_LEVEL": "INFO", **overrides})


@dataclass
class StackProc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    _log: object = field(repr=False, default=None)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_output(self, needle: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}):\n{self.output()[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: no {needle!r} after {timeout}s:\n{self.output()[-4000:]}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        if self._log is not None:
            self._log.close()


@dataclass
class AiStack:
    port: int
    procs: dict[str, StackProc]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, session_id: object, token: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/sessions/{session_id}/?token={token}"

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{p.output()[-3000:]}" for n, p in self.procs.items())


def start_stack(log_dir: Path, **env: str) -> AiStack:
    port = free_port()
    commands = {
        "worker": [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "project",
            "worker",
            "-Q",
            "ai.realtime",
            "-n",
            f"ai-test-{os.getpid()}@%h",
            "--pool",
            "threads",
            "--concurrency",
            "8",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
        ],
        "relay": [sys.executable, "manage.py", "run_outbox_relay", "--poll-interval", "0.5"],
        "subscribers": [sys.executable, "manage.py", "run_event_subscribers"],
        "web": [
            sys.executable,
            "-m",
            "uvicorn",
            "project.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws",
            "websockets",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
    }
    procs: dict[str, StackProc] = {}
    environment = stack_env(**env)
    try:
        for name, command in commands.items():
            log_path = log_dir / f"{name}.log"
            log = log_path.open("wb")
            popen = subprocess.Popen(
                command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            procs[name] = StackProc(name=name, popen=popen, log_path=log_path, _log=log)
        procs["relay"].wait_for_output("outbox relay started", timeout=90)
        procs["subscribers"].wait_for_output("subscribers ready", timeout=90)
        wait_for_port(port, timeout=90)
        procs["worker"].wait_for_output("ready.", timeout=WORKER_READY_TIMEOUT)
    except BaseException:
        for proc in procs.values():
            proc.stop()
        raise
    return AiStack(port=port, procs=procs)


def purge_realtime_queue() -> None:
    from kombu import Connection

    with Connection(settings.BROKER_URL) as conn:
        channel = conn.channel()
        with contextlib.suppress(Exception):  # not declared yet: nothing to purge
            channel.queue_purge("ai.realtime")


@pytest.fixture(scope="module")
def ai_stack(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[AiStack]:
    with django_db_blocker.unblock():
        purge_realtime_queue()
        stack = start_stack(tmp_path_factory.mktemp("ai-stack"), AI_DEVICE="cpu")
    yield stack
    for proc in stack.procs.values():
        proc.stop()
