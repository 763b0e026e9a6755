"""The relay, the subscribers and the archiver serve their own metrics on METRICS_PORT, as in their containers.

Each runs as a real process with a multi-process directory of its own (what a
container has) and a free port; the test does the work through the broker or
the database and reads the process's counters over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from kombu import Connection

from apps.eventbus.contracts import event_build
from apps.eventbus.models import OutboxMessage
from tests.support.amqp import publish_confirmed
from tests.support.metrics import metric_sum, metrics_scrape
from tests.support.processes import REPO_ROOT, child_env
from tests.support.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SUBSCRIBER = "tests.integration.eventbus.outage_subscriber.OutageRecording"
SUBSCRIBER_QUEUE = "events.test_outage"


def _wait(predicate: Callable[[], object], *, timeout: float = 60.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class _Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


@pytest.fixture
def start_command(tmp_path) -> Iterator[Callable[..., tuple[_Process, int]]]:
    """``manage.py <args>`` with a metrics port and a multi-process directory of its own; returns it and its port."""
    started: list[_Process] = []

    def start(*args: str) -> tuple[_Process, int]:
        directory = tmp_path / f"prom-{len(started)}"
        directory.mkdir()
        port = free_port()
        env = child_env(METRICS_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=str(directory), LOG_LEVEL="INFO")
        proc = _Process([sys.executable, "manage.py", *args], env, tmp_path / f"{args[0]}-{len(started)}.log")
        started.append(proc)
        _wait(
            lambda: "# HELP" in metrics_scrape(port) or proc.popen.poll() is not None,
            timeout=90,
            what=f"{args[0]} metrics",
        )
        assert proc.popen.poll() is None, proc.log()
        return proc, port

    yield start
    for proc in started:
        proc.stop()


def _delete_queues(*names: str) -> None:
    with Connection(settings.BROKER_URL) as conn:
        for name in names:
            channel = conn.channel()
            try:
                with contextlib.suppress(Exception):  # not declared yet
                    channel.queue_delete(name)
            finally:
                with contextlib.suppress(Exception):  # the channel closed itself
                    channel.close()


def test_the_relay_serves_what_it_published_and_each_rows_lag(start_command, session_factory):
    session_factory()  # commits a session.created outbox row
    rows = OutboxMessage.objects.count()
    assert rows >= 1
    relay, port = start_command("run_outbox_relay", "--poll-interval", "0.5")

    _wait(
        lambda: not OutboxMessage.objects.exclude(status="published").exists(),
        timeout=60,
        what=f"the relay publishing\n{relay.log()}",
    )
    published = _wait(
        lambda: metric_sum(metrics_scrape(port), "ce_outbox_published_total"), timeout=30, what="the published counter"
    )
    text = metrics_scrape(port)
    assert published == rows
    assert metric_sum(text, "ce_outbox_publish_lag_seconds_count") == rows
    assert metric_sum(text, "ce_outbox_publish_lag_seconds_sum") > 0
    assert metric_sum(text, "ce_outbox_publish_failures_total") == 0


def test_the_subscribers_serve_events_applied_duplicates_and_dead_lettered(start_command):
    _delete_queues(SUBSCRIBER_QUEUE, f"{SUBSCRIBER_QUEUE}.dlq")
    subscribers, port = start_command("run_event_subscribers", "--subscriber", SUBSCRIBER)
    _wait(lambda: "subscribers ready" in subscribers.log(), timeout=60, what="the subscribers consuming")
    event = event_build(
        event_type="session.closed", session_id=uuid.uuid4(), user_id=None, data={}, occurred_at=timezone.now()
    )
    body = json.dumps(event.to_wire())

    publish_confirmed(settings.BROKER_URL, [body], message_ids=[str(event.event_id)])
    _wait(
        lambda: metric_sum(metrics_scrape(port), "ce_subscriber_events_total", outcome="applied"),
        what="the event applied",
    )
    # The same event again (a redelivery after a relay crash), then one no contract accepts.
    publish_confirmed(settings.BROKER_URL, [body, '{"not": "an event"}'], message_ids=[str(event.event_id)])
    _wait(
        lambda: metric_sum(metrics_scrape(port), "ce_subscriber_events_total", outcome="dead_lettered"),
        what=f"the bad event dead-lettered\n{subscribers.log()}",
    )
    _wait(
        lambda: metric_sum(metrics_scrape(port), "ce_subscriber_events_total", outcome="duplicate"),
        what="the duplicate",
    )
    text = metrics_scrape(port)
    assert metric_sum(text, "ce_subscriber_events_total", outcome="applied") == 1
    assert metric_sum(text, "ce_subscriber_events_total", outcome="duplicate") == 1
    assert metric_sum(text, "ce_subscriber_events_total", outcome="dead_lettered") == 1
    subscribers.stop()
    _delete_queues(SUBSCRIBER_QUEUE, f"{SUBSCRIBER_QUEUE}.dlq")


def test_the_archiver_serves_the_dead_letters_it_stored(start_command):
    from apps.ops.models import DeadLetter

    with Connection(settings.BROKER_URL) as conn:
        conn.default_channel.queue_purge("maintenance.dlq")
    archiver, port = start_command("run_deadletter_archiver")
    _wait(lambda: "archiver consuming" in archiver.log(), timeout=60, what="the archiver consuming")

    publish_confirmed(
        settings.BROKER_URL, ['{"dead": "letter"}'], exchange="", routing_key="maintenance.dlq", message_ids=["dl-1"]
    )
    _wait(lambda: DeadLetter.objects.exists(), timeout=60, what=f"the dead letter stored\n{archiver.log()}")
    stored = DeadLetter.objects.get()
    archived = _wait(
        lambda: metric_sum(
            metrics_scrape(port), "ce_dead_letters_archived_total", queue=stored.queue, reason=stored.reason
        ),
        timeout=30,
        what="the archived counter",
    )
    assert archived == 1
    assert metric_sum(metrics_scrape(port), "ce_dead_letters_archived_total") == 1
