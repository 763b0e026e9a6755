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
import random
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import amqp
import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from kombu import Connection

from apps.eventbus.amqp_io import batched_writes, buffered_reads
from apps.eventbus.models import OutboxMessage

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


def _backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter (attempt 1 -> up to base seconds)."""
    return random.uniform(0, min(cap, base * (2 ** max(attempt - 1, 0))))  # noqa: S311 - jitter, not crypto


def _count_published(n: int) -> None:
    try:
        from apps.common.metrics import OUTBOX_PUBLISHED
    except ImportError:
        return
    OUTBOX_PUBLISHED.inc(n)


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


class BrokerPublisher:
    """A confirm-mode channel that publishes a batch and waits for all its confirms."""

    def __init__(self, *, broker_url: str, confirm_timeout: float = 15.0) -> None:
        self.broker_url = broker_url
        self.confirm_timeout = confirm_timeout
        self._conn: Connection | None = None
        self._channel: Any = None
        self._next_tag = 1
        self._acked_upto = 0
        self._acked: set[int] = set()
        self._nacked: set[int] = set()
        self._returned: dict[str, str] = {}
        self._pending_tags: set[int] = set()

    def connect(self) -> None:
        self.close()
        conn = Connection(self.broker_url, connect_timeout=5, heartbeat=0)
        conn.connect()
        buffered_reads(conn)
        channel = conn.channel()
        self._declare(channel)
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        self._conn, self._channel = conn, channel
        self._next_tag = 1
        logger.info("relay connected to broker")

    def _declare(self, channel: Any) -> None:
        # Declare everything the relay publishes to, so a message committed
        # before any consumer started is still routed and kept (mandatory
        # routing would otherwise return it).
        from apps.eventbus.queues import dead_letter_queue, declare_topology, subscriber_queue
        from apps.eventbus.subscribers import registered_subscribers

        declare_topology(channel)
        for subscriber in registered_subscribers():
            subscriber_queue(subscriber.name, list(subscriber.patterns))(channel).declare()
            dead_letter_queue(f"events.{subscriber.name}")(channel).declare()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken; we are dropping it anyway
                self._conn.release()
        self._conn, self._channel = None, None

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self._acked_upto = max(self._acked_upto, delivery_tag)
        else:
            self._acked.add(delivery_tag)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self._nacked.update(t for t in self._pending_tags if t <= delivery_tag)
            self._acked_upto = max(self._acked_upto, delivery_tag)
        else:
            self._nacked.add(delivery_tag)

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        message_id = message.properties.get("message_id", "")
        self._returned[message_id] = f"unroutable: {exchange}/{routing_key}: {exc}"

    def publish_batch(self, rows: list[_Claimed]) -> dict[int, str]:
        """Publish ``rows`` and wait for every confirm. Returns {row id: error} for rows that failed."""
        if self._channel is None:
            raise RuntimeError("publish_batch before connect")
        self._acked.clear()
        self._nacked.clear()
        self._returned.clear()
        tags: dict[int, _Claimed] = {}
        first = self._next_tag
        with batched_writes(self._conn):
            self._publish_rows(rows, tags)
        self._pending_tags = set(tags)
        last = self._next_tag - 1
        deadline = time.monotonic() + self.confirm_timeout
        while not self._all_confirmed(first, last):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no confirm for {len(rows)} messages within {self.confirm_timeout}s")
            self._conn.drain_events(timeout=remaining)
        failures: dict[int, str] = {}
        for tag, row in tags.items():
            if row.message_id in self._returned:
                failures[row.id] = self._returned[row.message_id]
            elif tag in self._nacked:
                failures[row.id] = "nacked by the broker"
        return failures

    def _publish_rows(self, rows: list[_Claimed], tags: dict[int, _Claimed]) -> None:
        for row in rows:
            properties: dict[str, Any] = {
                "content_type": "application/json",
                "content_encoding": "utf-8",
                "delivery_mode": 2,
                "message_id": row.message_id,
                "application_headers": row.headers,
            }
            if row.kind == OutboxMessage.Kind.TASK:
                # Celery reads the task id from correlation_id (protocol 2).
                properties["correlation_id"] = row.message_id
            else:
                properties["correlation_id"] = row.correlation_id or row.message_id
                properties["type"] = row.routing_key
            self._channel.basic_publish(
                amqp.Message(row.body, **properties), exchange=row.exchange, routing_key=row.routing_key, mandatory=True
            )
            tags[self._next_tag] = row
            self._next_tag += 1

    def _all_confirmed(self, first: int, last: int) -> bool:
        if self._acked_upto >= last:
            return True
        return all(t <= self._acked_upto or t in self._acked or t in self._nacked for t in range(first, last + 1))


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
    ) -> None:
        # Broker outages back off up to max_backoff seconds: short enough that
        # a restarted broker (about 10 s) is used again within seconds.
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.publisher = BrokerPublisher(broker_url=broker_url or settings.BROKER_URL)
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
            failures = self.publisher.publish_batch(rows)
            if self.crash_after_publish:
                logger.warning("relay crash hook: SIGKILL after publish, before mark", extra={"rows": len(rows)})
                os.kill(os.getpid(), signal.SIGKILL)
            ok_ids = [r.id for r in rows if r.id not in failures]
            with connection.cursor() as cursor:
                if ok_ids:
                    cursor.execute(
                        "UPDATE eventbus_outboxmessage SET status = 'published', published_at = clock_timestamp(),"
                        " attempts = attempts + 1 WHERE id = ANY(%s)",
                        [ok_ids],
                    )
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
                            _backoff(attempts, base=1.0, cap=300.0),
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
        if result.published:
            _count_published(result.published)
        return result

    def run(self, *, once: bool = False) -> None:
        broker_failures = 0
        db_failures = 0
        while not self.stop_event.is_set():
            try:
                result = self.relay_batch()
                broker_failures = db_failures = 0
            except DatabaseError as exc:
                db_failures += 1
                delay = _backoff(db_failures, cap=self.max_backoff)
                logger.warning("relay database error; backing off", extra={"error": repr(exc), "sleep_s": delay})
                connection.close()
                self.stop_event.wait(delay)
                continue
            except BROKER_ERRORS as exc:
                broker_failures += 1
                delay = _backoff(broker_failures, cap=self.max_backoff)
                logger.warning("relay broker error; backing off", extra={"error": repr(exc), "sleep_s": delay})
                self.publisher.close()
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
