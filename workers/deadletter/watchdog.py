"""A worker notices a black-holed broker connection and reconnects (the consumer's watchdog thread).

Two gaps in Celery 5.7 leave a worker connected to a dead network path for good
(the chaos suite's ``partition-workers-rabbitmq`` showed both: canaries pending
for minutes after the path came back):

* The prefork worker's event loop publishes worker heartbeat events with
  publisher confirms (``confirm_publish``) and waits for the confirm without a
  timeout: on a black-holed connection that wait never ends, and the loop's
  own AMQP heartbeat check, a timer on the same loop, never runs again.
* A publish from the worker's main thread (mingle's hello at each reconnect, a
  control reply) waits the same way on a connection of the app's pool.
* The threads pool (the realtime worker) runs Celery's blocking loop, which
  sends and checks AMQP heartbeats only for green pools: never here.

The watchdog, one daemon thread per consumer, watches the frames received on
the consumer's connection, its event dispatcher's and the pool connections in
use: a healthy broker sends
at least a heartbeat every half interval, so when one has received nothing for
two intervals the watchdog shuts its socket down. Whatever waits on it (the
loop, a confirm) then fails with a connection error and Celery reconnects,
re-consuming; unacknowledged messages were requeued by the broker meanwhile.
Without an event loop it also has the loop thread send our heartbeats (a
pending operation, run between two reads), so the broker keeps the connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any

logger = logging.getLogger("workers.deadletter.watchdog")


class _Watched:
    def __init__(self, connection: Any, now: float) -> None:
        self.connection = connection
        self.frames = connection.bytes_recv
        self.since = now


class BrokerWatchdog:
    def __init__(self, consumer: Any, *, heartbeat: float) -> None:
        self.consumer = consumer
        self.heartbeat = heartbeat
        self.stop_event = threading.Event()
        self._watched: dict[str, _Watched] = {}
        self._last_beat = 0.0
        self.dropped = 0

    def start(self) -> None:
        threading.Thread(target=self._run, name="broker-watchdog", daemon=True).start()

    def _run(self) -> None:
        tick = max(0.2, min(1.0, self.heartbeat / 4))
        while not self.stop_event.wait(tick):
            try:
                self.check()
            except Exception:  # the watchdog must outlive any connection state it reads
                logger.exception("broker watchdog check failed")

    def _connections(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        consumer_conn = getattr(getattr(self.consumer, "connection", None), "_connection", None)
        if consumer_conn is not None:
            found["consumer"] = consumer_conn
        dispatcher = getattr(self.consumer, "event_dispatcher", None)
        events_conn = getattr(getattr(dispatcher, "connection", None), "_connection", None)
        if events_conn is not None:
            found["events"] = events_conn
        # Connections of the app's pool in use right now (a broadcast, a control reply,
        # a publish waiting for its confirm). Idle ones are read by nobody: not watched.
        pool = getattr(getattr(self.consumer, "app", None), "_pool", None)
        for index, kombu_conn in enumerate(list(getattr(pool, "_dirty", ()) or ())):
            pooled = getattr(kombu_conn, "_connection", None)
            if pooled is not None:
                found[f"pool{index}:{id(kombu_conn)}"] = pooled
        return found

    def check(self, now: float | None = None) -> None:
        """Drop a connection silent for two heartbeat intervals; have the loop send heartbeats where it has none."""
        now = time.monotonic() if now is None else now
        current = self._connections()
        for name in set(self._watched) - set(current):
            del self._watched[name]  # back in the pool, or replaced
        for name, conn in current.items():
            watched = self._watched.get(name)
            if watched is None or watched.connection is not conn:
                self._watched[name] = _Watched(conn, now)
                continue
            if conn.bytes_recv != watched.frames:
                watched.frames, watched.since = conn.bytes_recv, now
            elif now - watched.since > 2 * self.heartbeat:
                self._drop(name, conn, silent_for=now - watched.since)
                watched.since = now
        if getattr(self.consumer, "hub", None) is None and now - self._last_beat >= self.heartbeat / 2:
            self._last_beat = now
            conn = self._watched.get("consumer")
            if conn is not None:
                # Run by the loop thread between two reads: the connection is not shared across threads.
                self.consumer._pending_operations.append(lambda c=conn.connection: _send_heartbeat(c))

    def _drop(self, name: str, conn: Any, *, silent_for: float) -> None:
        self.dropped += 1
        logger.warning(
            "broker connection silent: dropping it so the worker reconnects",
            extra={"connection": name, "silent_s": round(silent_for, 1), "heartbeat_s": self.heartbeat},
        )
        sock = getattr(getattr(conn, "transport", None), "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _send_heartbeat(conn: Any) -> None:
    with contextlib.suppress(Exception):  # a broken connection is the watchdog's to drop
        conn.send_heartbeat()
