"""The consumer's broker watchdog, on stand-in connections (its effect on real workers behind a
black-holed network path: tests/chaos, ``partition-workers-rabbitmq``)."""

from __future__ import annotations

import socket
from collections import deque
from types import SimpleNamespace

from workers.deadletter.watchdog import BrokerWatchdog


class _Conn:
    def __init__(self) -> None:
        self.bytes_recv = 0
        self.heartbeats = 0
        self.a, self.b = socket.socketpair()
        self.transport = SimpleNamespace(sock=self.a)

    def send_heartbeat(self) -> None:
        self.heartbeats += 1

    def shut(self) -> bool:
        """Was our end shut down (the peer reads EOF)?"""
        self.b.settimeout(0.5)
        return self.b.recv(1) == b""


def _consumer(*, hub: object | None = None) -> tuple[SimpleNamespace, _Conn, _Conn]:
    conn, events = _Conn(), _Conn()
    consumer = SimpleNamespace(
        connection=SimpleNamespace(_connection=conn),
        event_dispatcher=SimpleNamespace(connection=SimpleNamespace(_connection=events)),
        app=SimpleNamespace(_pool=None),
        hub=hub,
        _pending_operations=deque(),
    )
    return consumer, conn, events


def test_a_connection_silent_for_two_heartbeats_is_shut_down_and_a_live_one_is_not():
    consumer, conn, events = _consumer(hub=object())
    dog = BrokerWatchdog(consumer, heartbeat=10)
    dog.check(now=0)
    for t in range(1, 25):
        events.bytes_recv += 1  # the events connection keeps hearing from the broker
        dog.check(now=t)
    assert dog.dropped == 1
    assert conn.shut()
    events.b.settimeout(0.1)
    try:
        events.b.recv(1)
        raise AssertionError("the live connection was shut down")
    except TimeoutError:
        pass


def test_a_replaced_connection_is_watched_afresh():
    consumer, conn, events = _consumer(hub=object())
    dog = BrokerWatchdog(consumer, heartbeat=10)
    for t, replace in ((0, False), (15, False), (19, True), (30, False)):
        if replace:
            consumer.connection._connection = _Conn()  # Celery reconnected
        events.bytes_recv += 1
        dog.check(now=t)
    assert dog.dropped == 0


def test_without_an_event_loop_the_loop_thread_is_given_heartbeats_to_send():
    consumer, conn, _ = _consumer(hub=None)
    dog = BrokerWatchdog(consumer, heartbeat=10)
    for t in range(0, 21):
        conn.bytes_recv += 1
        dog.check(now=t)
    assert 3 <= len(consumer._pending_operations) <= 5  # every half interval
    while consumer._pending_operations:
        consumer._pending_operations.popleft()()
    assert conn.heartbeats >= 3


def test_with_an_event_loop_no_heartbeats_are_queued():
    consumer, conn, _ = _consumer(hub=object())
    dog = BrokerWatchdog(consumer, heartbeat=10)
    for t in range(0, 21):
        conn.bytes_recv += 1
        dog.check(now=t)
    assert not consumer._pending_operations
