"""The one confirm-mode publisher: every message the platform itself sends to RabbitMQ goes out here.

The outbox relay (a batch per round trip), dead-letter replay (one message to a
work queue or a subscriber's queue) and the ops canary publish through
``ConfirmPublisher``; Celery's own producer is used only by Celery.

Each message is published with ``mandatory`` set on a channel in confirm
mode, and ``publish_batch`` waits for every confirm (pipelined: one round trip
per batch, not per message). A returned (unroutable) or nacked message is a
per-message failure; a broker or network error raises and leaves the caller to
reconnect. ``declare`` runs on the fresh channel before anything is published,
so what a message is routed to exists even before any consumer started.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import amqp
from django.conf import settings
from kombu import Connection

from apps.eventbus.amqp_io import BrokerHosts, batched_writes, buffered_reads

logger = logging.getLogger(__name__)

# Properties every message of the platform carries unless it says otherwise.
DEFAULT_PROPERTIES: dict[str, Any] = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "delivery_mode": 2,
}


class PublishError(Exception):
    """The broker did not take the message: returned as unroutable, nacked, or not confirmed in time."""


@dataclass(frozen=True)
class OutgoingMessage:
    body: bytes | str
    exchange: str
    routing_key: str
    headers: dict[str, Any] = field(default_factory=dict)
    # AMQP basic properties (message_id, correlation_id, type, content_type, ...);
    # DEFAULT_PROPERTIES fill in what is missing.
    properties: dict[str, Any] = field(default_factory=dict)

    def amqp_message(self) -> amqp.Message:
        body = self.body.encode() if isinstance(self.body, str) else self.body
        return amqp.Message(body, **{**DEFAULT_PROPERTIES, **self.properties, "application_headers": self.headers})


class ConfirmPublisher:
    """A connection and a confirm-mode channel, kept open across batches until ``close``."""

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        confirm_timeout: float = 15.0,
        connect_timeout: float = 5.0,
        heartbeat: float = 0,
        declare: Callable[[Any], None] | None = None,
    ) -> None:
        self.broker_url = broker_url or settings.BROKER_URL
        # Several hosts (a failover BROKER_URL): each reconnect starts at the next one.
        self.hosts = BrokerHosts(self.broker_url)
        self.confirm_timeout = confirm_timeout
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.declare = declare
        self._conn: Connection | None = None
        self._channel: Any = None
        self._next_tag = 1
        self._acked_upto = 0
        self._acked: set[int] = set()
        self._nacked: set[int] = set()
        self._returned: dict[str, str] = {}  # message_id -> why the broker returned it
        self._pending_tags: set[int] = set()

    def __enter__(self) -> ConfirmPublisher:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def host(self) -> str | None:
        """``host:port`` of the node this publisher is (or was last) connected to."""
        return self.hosts.current_host

    @property
    def channel(self) -> Any:
        if self._channel is None:
            raise RuntimeError("the publisher is not connected")
        return self._channel

    def connect(self) -> None:
        self.close()
        conn = self.hosts.connect(connect_timeout=self.connect_timeout, heartbeat=self.heartbeat)
        buffered_reads(conn)
        channel = conn.channel()
        if self.declare is not None:
            self.declare(channel)
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        self._conn, self._channel = conn, channel
        self._next_tag = 1
        self._acked_upto = 0

    def close(self, *, broken: bool = False) -> None:
        """Close the connection; a ``broken`` one is dropped without the AMQP close handshake,
        which would wait forever on a dead peer."""
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken; we are dropping it anyway
                if broken:
                    self._conn.collect()
                else:
                    self._conn.release()
        self._conn, self._channel = None, None

    def heartbeat_check(self) -> None:
        """Between batches: read what the broker sent (its heartbeats, late confirms) and send ours.

        Raises a broker error when the broker has been silent for two heartbeat
        intervals, so a dead connection is replaced instead of failing the next batch late.
        """
        conn = self._conn
        if conn is None or not self.heartbeat:
            return
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.01)
        conn.heartbeat_check()

    def publish(self, message: OutgoingMessage) -> None:
        """One message, confirmed; raises ``PublishError`` when the broker did not take it."""
        failures = self.publish_batch([message])
        if failures:
            raise PublishError(failures[0])

    def publish_batch(self, messages: Sequence[OutgoingMessage]) -> dict[int, str]:
        """Publish ``messages`` and wait for every confirm. Returns {index: error} for those that failed."""
        channel, conn = self.channel, self._conn
        if conn is None:
            raise RuntimeError("the publisher is not connected")
        self._acked.clear()
        self._nacked.clear()
        self._returned.clear()
        first = self._next_tag
        with batched_writes(conn):
            for message in messages:
                channel.basic_publish(
                    message.amqp_message(),
                    exchange=message.exchange,
                    routing_key=message.routing_key,
                    mandatory=True,
                )
                self._next_tag += 1
        last = self._next_tag - 1
        self._pending_tags = set(range(first, last + 1))
        deadline = time.monotonic() + self.confirm_timeout
        while not self._all_confirmed(first, last):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no confirm for {len(messages)} messages within {self.confirm_timeout}s")
            conn.drain_events(timeout=remaining)
        failures: dict[int, str] = {}
        for index, (tag, message) in enumerate(zip(range(first, last + 1), messages, strict=True)):
            message_id = message.properties.get("message_id", "")
            if message_id in self._returned:
                failures[index] = self._returned[message_id]
            elif tag in self._nacked:
                failures[index] = "nacked by the broker"
        if self._nacked:
            self._drop_after_nack()
        return failures

    def _drop_after_nack(self) -> None:
        """A nack: a queue the message was routed to could not take it. Reconnect before the next batch.

        A channel opened while a quorum queue was electing a new leader (a
        connection re-made right after its cluster node died) went on nacking
        every publish to that queue: 119 batches in 15 s on RabbitMQ 3.10, while
        a fresh connection a moment later published at once (the cluster
        failover test). Closing here makes the caller's next ``connected``
        check false, so the retry goes out on a new connection and channel.
        """
        logger.warning("broker nacked a publish; reconnecting before the next batch", extra={"broker": self.host})
        self.close()

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
        # basic.return carries no delivery tag: the message id names the message.
        message_id = message.properties.get("message_id", "")
        self._returned[message_id] = f"unroutable: {exchange}/{routing_key}: {exc}"

    def _all_confirmed(self, first: int, last: int) -> bool:
        if self._acked_upto >= last:
            return True
        return all(t <= self._acked_upto or t in self._acked or t in self._nacked for t in range(first, last + 1))


def publish_confirmed(
    message: OutgoingMessage,
    *,
    broker_url: str | None = None,
    passive_queue: str | None = None,
    declare: Callable[[Any], None] | None = None,
) -> None:
    """Publish one message on a connection of its own and wait for its confirm.

    ``passive_queue``: the queue must already exist (a passive declare first),
    so a message for a queue that is gone fails loudly instead of being dropped.
    """
    with ConfirmPublisher(broker_url, declare=declare) as publisher:
        if passive_queue is not None:
            publisher.channel.queue_declare(queue=passive_queue, passive=True)
        publisher.publish(message)
