"""The outbox relay: publishes committed outbox rows to RabbitMQ, at least once.

One loop, any number of processes (``python manage.py run_outbox_relay``):

1. In one PostgreSQL transaction, claim up to ``batch_size`` pending rows with
   ``SELECT ... FOR UPDATE SKIP LOCKED`` (a second relay skips them, so in the
   normal path no row is published twice).
2. Publish them all on a confirm-mode channel with ``mandatory`` set, then wait
   for the broker's confirms (pipelined: one round trip per batch, not per
   message). A returned (unroutable) or nacked message is a per-row failure.
3. Mark the confirmed rows published and commit. Failed rows get a backoff
   (``available_at``) and, after ``max_attempts``, are parked with an alert log
   line: an operator looks at them in admin and requeues them.

A crash between 2 and 3 rolls the claim back: the rows are published again by
the next relay (duplicates, which subscribers absorb by ``event_id``). A broker
error rolls back the batch and the relay reconnects with exponential backoff,
without counting the failure against the rows.

It wakes on ``LISTEN eventbus_outbox`` (the insert trigger's NOTIFY, delivered
at commit) and polls every ``poll_interval`` seconds as the fallback.

Order: one relay publishes in ``id`` order, but several relays, a row in
backoff, or a republication after a crash can deliver events out of order.
Subscribers must not depend on arrival order (``context.updated`` carries the
event's ``seq`` for that).

Test hook: ``OUTBOX_RELAY_CRASH_AFTER_PUBLISH=1`` makes the relay SIGKILL
itself after the broker confirmed its first batch and before marking it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import amqp
import psycopg
from django.db import DatabaseError, connection, transaction

from apps.common.backoff import backoff_delay
from apps.common.metrics import OUTBOX_PUBLISH_FAILURES, OUTBOX_PUBLISH_LAG, OUTBOX_PUBLISHED
from apps.eventbus.messages import BROKER_HEARTBEAT_S
from apps.eventbus.models import OutboxMessage
from apps.eventbus.publisher import ConfirmPublisher, OutgoingMessage
from apps.eventbus.queues import dead_letter_queue, declare_topology, subscriber_queue, subscriber_queue_name
from apps.eventbus.subscribers import registered_subscribers

logger = logging.getLogger("apps.eventbus.relay")

NOTIFY_CHANNEL = "eventbus_outbox"
# Test hook: SIGKILL the relay after the broker confirmed a batch but before
# the rows are marked published (the window the at-least-once proof needs).
CRASH_AFTER_PUBLISH_ENV = "OUTBOX_RELAY_CRASH_AFTER_PUBLISH"

BROKER_ERRORS: tuple[type[BaseException], ...] = (
    amqp.exceptions.AMQPError,
    ConnectionError,
    OSError,
    socket.timeout,
)


def _count_batch(result: BatchResult, lags: list[float]) -> None:
    """After the batch committed: rows published (and each one's lag since its insert), rows failed."""
    if result.published:
        OUTBOX_PUBLISHED.inc(result.published)
    for lag in lags:
        OUTBOX_PUBLISH_LAG.observe(max(lag, 0.0))
    if result.parked:
        OUTBOX_PUBLISH_FAILURES.labels(outcome="parked").inc(result.parked)
    if result.failed > result.parked:
        OUTBOX_PUBLISH_FAILURES.labels(outcome="retry").inc(result.failed - result.parked)


@dataclass
class _Claimed:
    id: int
    message_id: str
    kind: str
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    body: bytes
    correlation_id: str
    attempts: int


@dataclass
class BatchResult:
    claimed: int = 0
    published: int = 0
    failed: int = 0
    parked: int = 0
    failures: dict[int, str] = field(default_factory=dict)


def _outgoing(row: _Claimed) -> OutgoingMessage:
    properties: dict[str, Any] = {"message_id": row.message_id}
    if row.kind == OutboxMessage.Kind.TASK:
        # Celery reads the task id from correlation_id (protocol 2).
        properties["correlation_id"] = row.message_id
    else:
        properties["correlation_id"] = row.correlation_id or row.message_id
        properties["type"] = row.routing_key
    return OutgoingMessage(
        body=row.body, exchange=row.exchange, routing_key=row.routing_key, headers=row.headers, properties=properties
    )


def _declare(channel: Any) -> None:
    """Everything the relay publishes to, so a message committed before any consumer started is
    still routed and kept (mandatory routing would otherwise return it)."""
    declare_topology(channel)
    for subscriber in registered_subscribers():
        subscriber_queue(subscriber.name, list(subscriber.patterns))(channel).declare()
        dead_letter_queue(subscriber_queue_name(subscriber.name))(channel).declare()


class NotifyListener:
    """``LISTEN eventbus_outbox`` on a connection of its own; ``wait`` returns on a NOTIFY or after ``timeout``."""

    def __init__(self) -> None:
        self._conn: psycopg.Connection | None = None

    def _connect(self) -> None:
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("prepare_threshold", None)
        self._conn = psycopg.connect(autocommit=True, **params)
        self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")

    def wait(self, timeout: float) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._connect()
            if self._conn is None:
                raise psycopg.OperationalError("LISTEN connection not open")
            woke = False
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                woke = True
            if woke:
                # Fold the notifications that queued up meanwhile into this wake.
                while select.select([self._conn.fileno()], [], [], 0)[0]:
                    if not list(self._conn.notifies(timeout=0.001)):
                        break
            return woke
        except (psycopg.Error, OSError) as exc:
            logger.warning("relay LISTEN connection failed; polling", extra={"error": str(exc)})
            self.close()
            time.sleep(timeout)
            return False

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                self._conn.close()
        self._conn = None


class OutboxRelay:
    def __init__(
        self,
        *,
        broker_url: str | None = None,
        batch_size: int = 500,
        poll_interval: float = 2.0,
        max_attempts: int = 5,
        max_backoff: float = 10.0,
        heartbeat: float = BROKER_HEARTBEAT_S,
    ) -> None:
        # Broker outages back off up to max_backoff seconds: short enough that
        # a restarted broker (about 10 s) is used again within seconds.
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.publisher = ConfirmPublisher(broker_url, declare=_declare, heartbeat=heartbeat)
        self.listener = NotifyListener()
        self.stop_event = threading.Event()
        self.crash_after_publish = os.environ.get(CRASH_AFTER_PUBLISH_ENV) == "1"
        self.published_total = 0

    def _claim(self) -> list[_Claimed]:
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT id, message_id::text, kind, exchange, routing_key, headers::text, body::text,
                       correlation_id, attempts
                FROM eventbus_outboxmessage
                WHERE status = 'pending' AND available_at <= clock_timestamp()
                ORDER BY id
                LIMIT %s
                FOR UPDATE SKIP LOCKED
                """,
                [self.batch_size],
            )
            return [
                _Claimed(
                    id=r[0],
                    message_id=r[1],
                    kind=r[2],
                    exchange=r[3],
                    routing_key=r[4],
                    headers=json.loads(r[5]),
                    body=r[6].encode(),
                    correlation_id=r[7],
                    attempts=r[8],
                )
                for r in cursor.fetchall()
            ]

    def relay_batch(self) -> BatchResult:
        """Claim, publish and mark one batch. Broker errors propagate (the batch rolls back)."""
        result = BatchResult()
        with transaction.atomic():
            rows = self._claim()
            result.claimed = len(rows)
            if not rows:
                return result
            if not self.publisher.connected:
                self.publisher.connect()
                logger.info("relay connected to broker")
            failures = {
                rows[index].id: error
                for index, error in self.publisher.publish_batch([_outgoing(row) for row in rows]).items()
            }
            if self.crash_after_publish:
                logger.warning("relay crash hook: SIGKILL after publish, before mark", extra={"rows": len(rows)})
                os.kill(os.getpid(), signal.SIGKILL)
            ok_ids = [r.id for r in rows if r.id not in failures]
            lags: list[float] = []
            with connection.cursor() as cursor:
                if ok_ids:
                    cursor.execute(
                        "UPDATE eventbus_outboxmessage SET status = 'published', published_at = clock_timestamp(),"
                        " attempts = attempts + 1 WHERE id = ANY(%s)"
                        " RETURNING EXTRACT(EPOCH FROM published_at - created_at)",
                        [ok_ids],
                    )
                    lags = [float(row[0]) for row in cursor.fetchall()]
                for row in rows:
                    if row.id not in failures:
                        continue
                    attempts = row.attempts + 1
                    parked = attempts >= self.max_attempts
                    cursor.execute(
                        "UPDATE eventbus_outboxmessage SET attempts = %s, last_error = %s, status = %s,"
                        " available_at = clock_timestamp() + make_interval(secs => %s) WHERE id = %s",
                        [
                            attempts,
                            failures[row.id][:2000],
                            "parked" if parked else "pending",
                            backoff_delay(attempts, base=1.0, cap=300.0),
                            row.id,
                        ],
                    )
                    if parked:
                        result.parked += 1
                        logger.error(
                            "ALERT outbox row parked after repeated publish failures",
                            extra={
                                "alert": "outbox_row_parked",
                                "outbox_id": row.id,
                                "message_id": row.message_id,
                                "routing_key": row.routing_key,
                                "attempts": attempts,
                                "error": failures[row.id],
                            },
                        )
                    else:
                        logger.warning(
                            "outbox row failed to publish; will retry",
                            extra={"outbox_id": row.id, "attempts": attempts, "error": failures[row.id]},
                        )
            result.published = len(ok_ids)
            result.failed = len(failures)
            result.failures = failures
        self.published_total += result.published
        _count_batch(result, lags)
        return result

    def run(self, *, once: bool = False) -> None:
        broker_failures = 0
        db_failures = 0
        while not self.stop_event.is_set():
            try:
                self.publisher.heartbeat_check()
                result = self.relay_batch()
                broker_failures = db_failures = 0
            except DatabaseError as exc:
                db_failures += 1
                delay = backoff_delay(db_failures, base=0.5, cap=self.max_backoff)
                logger.warning("relay database error; backing off", extra={"error": repr(exc), "sleep_s": delay})
                connection.close()
                self.stop_event.wait(delay)
                continue
            except BROKER_ERRORS as exc:
                broker_failures += 1
                delay = backoff_delay(broker_failures, base=0.5, cap=self.max_backoff)
                logger.warning("relay broker error; backing off", extra={"error": repr(exc), "sleep_s": delay})
                self.publisher.close(broken=True)
                self.stop_event.wait(delay)
                continue
            if once and result.claimed < self.batch_size:
                return
            if result.claimed >= self.batch_size:
                continue
            self.listener.wait(self.poll_interval)
        self.close()

    def close(self) -> None:
        self.publisher.close()
        self.listener.close()
