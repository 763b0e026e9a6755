"""A dead network path is noticed: the relay's and the subscriber runner's connections heartbeat.

Through a proxy that black-holes the open connection (it neither closes nor
answers), each notices within about two heartbeat intervals, reconnects and
goes on delivering. With heartbeat 0 (before) they waited on the dead socket
forever.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from apps.eventbus import services
from apps.eventbus.contracts import event_build
from apps.eventbus.models import OutboxMessage, ProcessedEvent
from apps.eventbus.relay import OutboxRelay
from apps.eventbus.subscribers.base import Subscriber
from apps.eventbus.subscribers.runner import SubscriberRunner
from tests.support.amqp import publish_confirmed
from tests.support.blackhole import BlackholeProxy

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

HEARTBEAT = 1.0
NOTICED_WITHIN = 2 * HEARTBEAT + 8.0  # two missed intervals, plus a loaded machine's slack


class HeartbeatRecording(Subscriber):
    name = "test_heartbeat"
    patterns = ("session.*",)
    batch_size = 10

    def handle(self, event):
        pass


@pytest.fixture
def proxy() -> Iterator[BlackholeProxy]:
    broker = urlsplit(settings.BROKER_URL)
    proxy = BlackholeProxy(upstream_port=broker.port or 5672)
    proxy.start()
    yield proxy
    proxy.stop()


def _through(proxy: BlackholeProxy) -> str:
    broker = urlsplit(settings.BROKER_URL)
    netloc = f"{broker.username}:{broker.password}@127.0.0.1:{proxy.port}"
    return urlunsplit((broker.scheme, netloc, broker.path, broker.query, broker.fragment))


def _in_thread(target) -> threading.Thread:
    def run() -> None:
        try:
            target()
        finally:
            connection.close()  # this thread's own database connection

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait(condition, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, what
        time.sleep(0.05)
    return time.monotonic() - started


def _publish_event() -> str:
    event = event_build(
        event_type="session.closed", session_id=uuid.uuid4(), user_id=None, data={}, occurred_at=timezone.now()
    )
    publish_confirmed(settings.BROKER_URL, [json.dumps(event.to_wire())], message_ids=[str(event.event_id)])
    return str(event.event_id)


def test_the_subscriber_runner_notices_a_black_holed_broker_and_reconnects(proxy):
    runner = SubscriberRunner(subscribers=[HeartbeatRecording()], broker_url=_through(proxy), heartbeat=HEARTBEAT)
    thread = _in_thread(runner.run)
    try:
        assert runner.ready_event.wait(30), "the runner did not connect"
        first = _publish_event()
        _wait(lambda: ProcessedEvent.objects.filter(event_id=first).exists(), 30, "not applied before the fault")
        proxy.blackhole()
        noticed = _wait(lambda: runner.stats.broker_reconnects >= 1, NOTICED_WITHIN, "dead connection not noticed")
        # Reconnected through the proxy (new connections are forwarded): delivery goes on.
        second = _publish_event()
        _wait(lambda: ProcessedEvent.objects.filter(event_id=second).exists(), 60, "not applied after reconnecting")
        print(f"runner noticed the black hole after {noticed:.1f} s (heartbeat {HEARTBEAT} s)")
    finally:
        runner.stop_event.set()
        thread.join(timeout=20)


def test_the_outbox_relay_notices_a_black_holed_broker_and_reconnects(proxy):
    relay = OutboxRelay(broker_url=_through(proxy), poll_interval=0.2, heartbeat=HEARTBEAT)
    thread = _in_thread(relay.run)
    try:
        services.outbox_event_add(event_type="session.closed", session_id=uuid.uuid4(), user_id=None, data={})
        _wait(lambda: relay.published_total >= 1, 30, "nothing published before the fault")
        connected = relay.publisher._conn
        proxy.blackhole()
        _wait(lambda: relay.publisher._conn is not connected, NOTICED_WITHIN, "dead connection not noticed")
        services.outbox_event_add(event_type="session.closed", session_id=uuid.uuid4(), user_id=None, data={})
        _wait(
            lambda: not OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING).exists(),
            60,
            "not published after reconnecting",
        )
    finally:
        relay.stop_event.set()
        thread.join(timeout=20)
