"""Publishing from a test straight to the broker, every message confirmed before the call returns.

``channel.confirm_select()`` alone does not make py-amqp wait: ``basic_publish``
waits for the broker's ack only on a connection opened with ``confirm_publish``
(``amqp.Channel`` picks ``basic_publish_confirm`` at creation). Without the wait
a quorum queue may never get the last message sent before the connection
closes, and a test that counts deliveries waits for it forever.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

import amqp
from kombu import Connection


def publish_confirmed(
    broker_url: str,
    bodies: Iterable[bytes | str],
    *,
    message_ids: Sequence[str] = (),
    exchange: str = "events",
    routing_key: str = "session.closed",
) -> None:
    """Publish each JSON body; return once the broker confirmed them all (``message_ids`` in order, else random)."""
    with Connection(broker_url, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        for index, body in enumerate(bodies):
            message_id = message_ids[index] if index < len(message_ids) else str(uuid.uuid4())
            channel.basic_publish(
                amqp.Message(body, content_type="application/json", message_id=message_id),
                exchange=exchange,
                routing_key=routing_key,
            )
