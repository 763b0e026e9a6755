"""The worker's message consumer, changed so that no malformed message is ever acked away.

Celery acks a message it cannot decode ("so it doesn't enter a loop"), which
silently loses it. Here every message the worker cannot turn into a task is
rejected without requeue, so RabbitMQ dead-letters it, and the reason is noted
for the archiver (``ops.TaskFailure``). The worker keeps consuming.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from celery import signals
from celery.worker.consumer import Consumer

from workers.deadletter.watchdog import BrokerWatchdog

logger = logging.getLogger("workers.deadletter")


def _note(message: Any, exception_class: str, text: str, tb: str = "") -> None:
    from workers.base import record_task_failure

    headers = getattr(message, "headers", None) or {}
    properties = getattr(message, "properties", None) or {}
    delivery_info = getattr(message, "delivery_info", None) or {}
    task_id = headers.get("id") or properties.get("correlation_id") or properties.get("message_id")
    record_task_failure(
        task_id=task_id,
        task_name=str(headers.get("task") or ""),
        queue=str(delivery_info.get("routing_key") or ""),
        exc=None,
        traceback=tb,
        attempts=0,
        reason="rejected",
        exception_class=exception_class,
        message=text,
    )


def _reject(message: Any, errors: tuple) -> None:
    if getattr(message, "acknowledged", False):
        return
    message.reject_log_error(logger, errors, requeue=False)


class DeadLetteringConsumer(Consumer):
    watchdog: BrokerWatchdog | None = None

    def connect(self) -> Any:
        """Declare exchanges, work queues and every ``*.dlq`` on each (re)connection.

        Celery declares only the queues this worker consumes; without the DLQs
        bound on ``dlx`` a dead-lettered message would be dropped, and native
        delayed delivery (set up right after) binds every queue of the app.
        """
        from apps.eventbus.queues import declare_topology

        connection = super().connect()
        channel = connection.channel()
        try:
            declare_topology(channel)
        finally:
            channel.close()
        if getattr(self, "watchdog", None) is None and self.amqheartbeat:
            # A black-holed connection is dropped and replaced (workers/deadletter/watchdog.py).
            self.watchdog = BrokerWatchdog(self, heartbeat=float(self.amqheartbeat))
            self.watchdog.start()
        return connection

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        logger.error(
            "undecodable task message dead-lettered: %s",
            exc,
            extra={"content_type": getattr(message, "content_type", None)},
        )
        _note(message, "MalformedMessage", f"cannot decode the message body ({type(exc).__name__}: {exc})")
        _reject(message, self.connection_errors)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handler = super().create_task_handler(*args, **kwargs)
        connection_errors = tuple(self.connection_errors)

        def on_task_received(message: Any) -> Any:
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as exc:  # noqa: BLE001 - a bad message must not stop the consumer
                logger.error("malformed task message dead-lettered: %s", exc)
                _note(message, "MalformedMessage", f"{type(exc).__name__}: {exc}", traceback.format_exc())
                _reject(message, connection_errors)
                return None

        return on_task_received


@signals.task_unknown.connect
def _on_unknown_task(message: Any = None, name: str | None = None, **kwargs: Any) -> None:
    # Celery already rejected it (requeue=False): only the note is ours.
    if message is not None:
        _note(message, "UnknownTask", f"no task named {name!r} is registered on this worker")


@signals.task_rejected.connect
def _on_rejected(message: Any = None, exc: Exception | None = None, **kwargs: Any) -> None:
    if message is not None and exc is not None:
        _note(message, "InvalidTaskMessage", f"{type(exc).__name__}: {exc}")
    elif message is not None:
        _note(message, "MalformedMessage", "the message is not a Celery task message")
