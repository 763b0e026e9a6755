"""Runs subscribers: ``python manage.py run_event_subscribers``.

One AMQP connection, one channel per subscriber (so acks and prefetch stay
per queue), one thread. Messages are gathered per subscriber for at most
``max_wait`` seconds or ``batch_size`` messages, then:

1. parsed against the contracts (a message that does not parse is rejected
   without requeue: RabbitMQ dead-letters it into ``events.<name>.dlq``);
2. in one transaction, ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` into
   ``ProcessedEvent`` keeps only events this subscriber has not applied, and
   ``handle_batch`` applies them;
3. after the commit, one ``basic.ack(multiple)`` settles the batch.

If the batch transaction fails, each event is retried alone in its own
transaction; the one that fails again is rejected (dead-lettered alone) and
the rest are applied. A crash after commit and before the ack redelivers the
batch, which step 2 turns into no-ops. A lost database connection is not the
events' fault: the runner drops the broker connection (the broker requeues
what was unacked) and reconnects with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import amqp
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from kombu import Connection

from apps.common.backoff import backoff_delay
from apps.common.logging import correlation_id, set_correlation_id
from apps.eventbus.amqp_io import BrokerHosts, buffered_reads
from apps.eventbus.contracts import ContractError, Event, event_parse
from apps.eventbus.hooks import hooks
from apps.eventbus.messages import (
    BROKER_HEARTBEAT_S,
    HEADER_DELIVERY_COUNT,
    HEADER_REPLAY_ID,
    REASON_REJECTED,
    REPLAY_SUCCEEDED,
    event_failure_key,
)
from apps.eventbus.queues import dead_letter_queue, subscriber_queue, subscriber_queue_name
from apps.eventbus.subscribers.base import Subscriber

logger = logging.getLogger("apps.eventbus.subscribers")

BROKER_ERRORS: tuple[type[BaseException], ...] = (amqp.exceptions.AMQPError, ConnectionError, OSError)
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)


def queue_name(subscriber: type[Subscriber] | Subscriber) -> str:
    return subscriber_queue_name(subscriber.name)


def processed_record(*, subscriber: str, events: Sequence[Event]) -> set[uuid.UUID]:
    """Record events as processed by ``subscriber``; returns the ids that were new (inside the caller's transaction)."""
    if not events:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO eventbus_processedevent (subscriber, event_id, event_type, processed_at)
            SELECT %s, e.id, e.type, clock_timestamp()
            FROM unnest(%s::uuid[], %s::text[]) AS e(id, type)
            ON CONFLICT (subscriber, event_id) DO NOTHING
            RETURNING event_id
            """,
            [subscriber, [e.event_id for e in events], [e.event_type for e in events]],
        )
        return {row[0] if isinstance(row[0], uuid.UUID) else uuid.UUID(str(row[0])) for row in cursor.fetchall()}


def subscriber_apply(*, subscriber: Subscriber, events: Sequence[Event]) -> int:
    """Apply events once each, in one transaction. Returns how many were new."""
    with transaction.atomic():
        new_ids = processed_record(subscriber=subscriber.name, events=events)
        fresh: list[Event] = []
        for event in events:
            if event.event_id in new_ids:
                new_ids.discard(event.event_id)  # a repeat inside one batch is applied once
                fresh.append(event)
        if fresh:
            # The events' correlation id on the handler's log lines (and on
            # anything it writes to the outbox) when the batch has one.
            ids = {e.correlation_id for e in fresh if e.correlation_id}
            token = set_correlation_id(ids.pop() if len(ids) == 1 else None)
            try:
                subscriber.handle_batch(fresh)
            finally:
                correlation_id.reset(token)
    return len(fresh)


@dataclass
class _Slot:
    subscriber: Subscriber
    channel: Any = None
    messages: list[Any] = field(default_factory=list)
    first_at: float = 0.0


@dataclass
class RunnerStats:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    broker_reconnects: int = 0
    database_waits: int = 0


class SubscriberRunner:
    def __init__(
        self,
        *,
        subscribers: Sequence[Subscriber],
        broker_url: str | None = None,
        max_wait: float = 0.05,
        heartbeat: float = BROKER_HEARTBEAT_S,
    ) -> None:
        if not subscribers:
            raise ValueError("no subscribers to run")
        self.broker_url = broker_url or settings.BROKER_URL
        # Several hosts (a failover BROKER_URL): each reconnect starts at the next one.
        self.hosts = BrokerHosts(self.broker_url)
        self.max_wait = max_wait
        self.heartbeat = heartbeat
        self.slots = {s.name: _Slot(subscriber=s) for s in subscribers}
        self.stop_event = threading.Event()
        self.ready_event = threading.Event()
        self.stats = RunnerStats()
        self._conn: Connection | None = None

    # --- broker -------------------------------------------------------------
    def connect(self) -> None:
        self.close()
        conn = self.hosts.connect(connect_timeout=5, heartbeat=self.heartbeat)
        buffered_reads(conn)
        for slot in self.slots.values():
            sub = slot.subscriber
            channel = conn.channel()
            subscriber_queue(sub.name, list(sub.patterns))(channel).declare()
            dead_letter_queue(queue_name(sub))(channel).declare()
            # Per-consumer prefetch (quorum queues have no global QoS): two
            # batches in flight keep the queue busy while one is committing.
            channel.basic_qos(prefetch_size=0, prefetch_count=sub.batch_size * 2, a_global=False)
            channel.basic_consume(queue=queue_name(sub), callback=self._receiver(slot), no_ack=False)
            slot.channel, slot.messages = channel, []
        self._conn = conn
        logger.info(
            "subscribers connected", extra={"subscribers": sorted(self.slots), "broker": self.hosts.current_host}
        )

    def close(self, *, broken: bool = False) -> None:
        """Close the connection; a ``broken`` one is dropped without the AMQP close handshake,
        which would wait forever on a dead peer."""
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken; dropping it
                if broken:
                    self._conn.collect()
                else:
                    self._conn.release()
        self._conn = None
        for slot in self.slots.values():
            slot.channel, slot.messages = None, []

    def _receiver(self, slot: _Slot):  # noqa: ANN202 - an amqp callback
        def receive(message: Any) -> None:
            if not slot.messages:
                slot.first_at = time.monotonic()
            slot.messages.append(message)

        return receive

    # --- processing ---------------------------------------------------------
    def _flush(self, slot: _Slot) -> None:
        messages, slot.messages = slot.messages, []
        if not messages:
            return
        sub, channel = slot.subscriber, slot.channel
        parsed: list[tuple[Any, Event]] = []
        for message in messages:
            try:
                parsed.append((message, event_parse(message.body)))
            except ContractError as exc:
                self._dead_letter(channel, message, sub, reason=f"contract: {exc} {exc.errors}", exc=exc)
        if not parsed:
            return
        try:
            applied = subscriber_apply(subscriber=sub, events=[e for _, e in parsed])
        except TRANSIENT_DB_ERRORS:
            self._keep_in_hand(slot, [m for m, _ in parsed])
            raise
        except Exception:  # one bad event must not hold back the batch: retry one by one
            logger.warning(
                "subscriber batch failed; applying events one by one",
                exc_info=True,
                extra={"subscriber": sub.name, "events": len(parsed)},
            )
            self._apply_one_by_one(slot, parsed)
            return
        self.stats.applied += applied
        self.stats.duplicates += len(parsed) - applied
        channel.basic_ack(delivery_tag=max(m.delivery_tag for m, _ in parsed), multiple=True)
        self._replays_finished([m for m, _ in parsed])

    def _apply_one_by_one(self, slot: _Slot, parsed: list[tuple[Any, Event]]) -> None:
        sub, channel = slot.subscriber, slot.channel
        for index, (message, event) in enumerate(parsed):
            try:
                applied = subscriber_apply(subscriber=sub, events=[event])
            except TRANSIENT_DB_ERRORS:
                self._keep_in_hand(slot, [m for m, _ in parsed[index:]])
                raise
            except Exception as exc:  # noqa: BLE001 - the handler refused this event
                self._dead_letter(channel, message, sub, reason=repr(exc), event=event, exc_info=True, exc=exc)
                continue
            self.stats.applied += applied
            self.stats.duplicates += 1 - applied
            channel.basic_ack(delivery_tag=message.delivery_tag)
            self._replays_finished([message])

    def _keep_in_hand(self, slot: _Slot, messages: list[Any]) -> None:
        """A database error: the unsettled messages go back to the front of the slot, still unacked.

        They are retried once the database answers, on the same channel: not
        handed back to the broker, whose redelivery would count against the
        queue's delivery limit and dead-letter good events during an outage.
        """
        slot.messages = messages + slot.messages

    def _replays_finished(self, messages: Sequence[Any]) -> None:
        """A replayed event (``ce_replay_id``, set by ``dead_letter_replay``) is settled: mark its replay succeeded.

        Succeeded also when it was a no-op (the event was applied before): the
        operator's question is whether the event is applied now, and it is.
        """
        replay_ids = [rid for m in messages if (rid := (m.headers or {}).get(HEADER_REPLAY_ID))]
        if not replay_ids or hooks.replay_finished is None:
            return
        try:
            for replay_id in replay_ids:
                hooks.replay_finished(replay_id=str(replay_id), status=REPLAY_SUCCEEDED)
        except Exception:  # the events are applied and acked; the audit row is secondary
            logger.exception("could not mark event replays succeeded", extra={"replay_ids": replay_ids})

    def _record_failure(self, message: Any, sub: Subscriber, *, event: Event | None, exc: BaseException | None) -> None:
        """Write why the event was refused where the archiver finds it (keyed by queue and event id); never raises.

        Like ``workers/base.py`` before its reject: the archiver joins the note
        onto the ``DeadLetter`` row (exception class, message, traceback).
        """
        event_id = str(event.event_id) if event is not None else str(message.properties.get("message_id") or "")
        if not event_id or exc is None or hooks.failure_recorded is None:
            return
        try:
            queue = queue_name(sub)
            redeliveries = int((message.headers or {}).get(HEADER_DELIVERY_COUNT) or 0)
            hooks.failure_recorded(
                task_id=event_failure_key(queue=queue, event_id=event_id),
                task_name=f"event:{event.event_type if event is not None else message.properties.get('type') or ''}",
                queue=queue,
                exception_class=type(exc).__name__,
                exception_message=str(exc) + (f" {exc.errors}" if isinstance(exc, ContractError) else ""),
                traceback="".join(traceback.format_exception(exc)),
                attempts=1 + redeliveries,
                reason=REASON_REJECTED,
            )
        except Exception:  # the dead letter matters more than its annotation
            logger.exception("could not record the event failure", extra={"subscriber": sub.name, "event_id": event_id})

    def _dead_letter(
        self,
        channel: Any,
        message: Any,
        sub: Subscriber,
        *,
        reason: str,
        event: Event | None = None,
        exc_info: bool = False,
        exc: BaseException | None = None,
    ) -> None:
        self._record_failure(message, sub, event=event, exc=exc)
        # Reject without requeue: the quorum queue dead-letters it (at least once) into events.<name>.dlq.
        channel.basic_reject(delivery_tag=message.delivery_tag, requeue=False)
        self.stats.dead_lettered += 1
        logger.error(
            "subscriber dead-lettered an event",
            exc_info=exc_info,
            extra={
                "subscriber": sub.name,
                "reason": reason[:1000],
                "event_id": str(event.event_id) if event else message.properties.get("message_id"),
                "event_type": event.event_type if event else message.properties.get("type"),
            },
        )

    # --- loop ---------------------------------------------------------------
    def run_once(self, *, idle_timeout: float = 1.0) -> None:
        """Wait for messages (up to ``idle_timeout``), then flush every slot that is full or has waited enough."""
        if self._conn is None:
            raise RuntimeError("run_once before connect")
        pending = [s for s in self.slots.values() if s.messages]
        if pending:
            oldest = min(s.first_at for s in pending)
            timeout = max(0.0005, oldest + self.max_wait - time.monotonic())
        else:
            timeout = idle_timeout
        with contextlib.suppress(TimeoutError):
            self._conn.drain_events(timeout=timeout)
        # Raises when the broker's heartbeats stopped (a dead peer, a black-holed network).
        self._conn.heartbeat_check()
        now = time.monotonic()
        for slot in self.slots.values():
            full = len(slot.messages) >= slot.subscriber.batch_size
            if slot.messages and (full or now - slot.first_at >= self.max_wait):
                self._flush(slot)

    def run(self) -> None:
        failures = 0
        while not self.stop_event.is_set():
            try:
                if self._conn is None:
                    self.connect()
                    self.ready_event.set()
                self.run_once()
                failures = 0
            except TRANSIENT_DB_ERRORS as exc:
                # The broker connection stays up and the messages stay in hand (see _keep_in_hand).
                failures += 1
                self.stats.database_waits += 1
                delay = backoff_delay(failures, base=0.5, cap=5.0)
                logger.warning(
                    "subscribers: database error; holding the messages and retrying",
                    extra={"error": repr(exc), "sleep_s": delay},
                )
                connection.close()
                self._wait_servicing_broker(delay)
            except BROKER_ERRORS as exc:
                failures += 1
                self.stats.broker_reconnects += 1
                delay = backoff_delay(failures, base=0.5, cap=10.0)
                logger.warning("subscribers: broker error; reconnecting", extra={"error": repr(exc), "sleep_s": delay})
                self.close(broken=True)
                self.stop_event.wait(delay)
        self.close()

    def _wait_servicing_broker(self, seconds: float) -> None:
        """Wait out a database outage while answering the broker's heartbeats (new messages queue up in hand)."""
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set() and (remaining := deadline - time.monotonic()) > 0:
            if self._conn is None:
                self.stop_event.wait(remaining)
                return
            try:
                with contextlib.suppress(TimeoutError):
                    self._conn.drain_events(timeout=min(1.0, remaining))
                self._conn.heartbeat_check()
            except BROKER_ERRORS as exc:  # the broker went too: reconnect on the next round
                self.stats.broker_reconnects += 1
                logger.warning("subscribers: broker error while waiting; reconnecting", extra={"error": repr(exc)})
                self.close(broken=True)
