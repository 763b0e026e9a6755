"""Real relay and subscriber processes over this run's database and vhost (or a private broker)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from kombu import Connection, Exchange, Queue

from tests.conftest import REPO_ROOT


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, env=env, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, needle: str, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return
            if self.popen.poll() is not None:
                raise AssertionError(f"process exited ({self.popen.returncode}) before {needle!r}:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"no {needle!r} after {timeout}s:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        if self._log.closed:
            return
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._log.close()


@pytest.fixture
def start_proc(tmp_path, subprocess_env, python_bin) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(*manage_args: str, ready: str | None = None, **env: str) -> Proc:
        log = tmp_path / f"proc{len(procs)}-{manage_args[0]}.log"
        proc = Proc([python_bin, "manage.py", *manage_args], subprocess_env(LOG_LEVEL="INFO", **env), log)
        procs.append(proc)
        if ready:
            proc.wait_for_output(ready)
        return proc

    yield start
    for proc in procs:
        proc.stop()
        # Shown by pytest only when the test failed.
        print(f"--- {proc.log_path.name} (rc={proc.popen.returncode}) ---\n{proc.output()[-4000:]}")


@pytest.fixture
def start_relay(start_proc) -> Callable[..., Proc]:
    def start(*args: str, **env: str) -> Proc:
        return start_proc("run_outbox_relay", "--poll-interval", "0.5", *args, ready="outbox relay started", **env)

    return start


@pytest.fixture
def start_subscribers(start_proc) -> Callable[..., Proc]:
    def start(*args: str, **env: str) -> Proc:
        return start_proc("run_event_subscribers", *args, ready="subscribers ready", **env)

    return start


@pytest.fixture(autouse=True)
def _fresh_subscriber_queues() -> None:
    """Subscriber queues outlive a test inside the run's vhost; start each test without them."""
    from apps.eventbus.subscribers import registered_subscribers

    names = [cls.name for cls in registered_subscribers()] + ["test_poison"]
    with Connection(settings.BROKER_URL) as conn:
        for name in names:
            for queue in (f"events.{name}", f"events.{name}.dlq"):
                channel = conn.channel()
                try:
                    with contextlib.suppress(Exception):  # not declared yet
                        channel.queue_delete(queue)
                finally:
                    with contextlib.suppress(Exception):  # the channel closed itself
                        channel.close()


class Tap:
    """A queue of the test's own bound to every event on ``events``: what reached the broker."""

    def __init__(self, broker_url: str, name: str):
        self.conn = Connection(broker_url)
        self.queue = Queue(
            name,
            exchange=Exchange("events", type="topic", durable=True),
            routing_key="#",
            durable=False,
            auto_delete=False,
        )(self.conn.channel())
        self.queue.exchange.declare()
        self.queue.declare()
        self.messages: list = []

    def drain(self) -> list:
        while (message := self.queue.get(no_ack=True)) is not None:
            self.messages.append(message)
        return self.messages

    def message_ids(self) -> list[str]:
        return [m.properties["message_id"] for m in self.drain()]

    def close(self) -> None:
        try:
            self.queue.delete()
        finally:
            self.conn.release()


@pytest.fixture
def tap(request) -> Iterator[Tap]:
    tap = Tap(settings.BROKER_URL, f"test.tap.{request.node.name[:80]}")
    yield tap
    tap.close()


def wait_until(predicate: Callable[[], bool], *, timeout: float = 30.0, interval: float = 0.1, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
