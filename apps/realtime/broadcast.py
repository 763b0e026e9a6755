"""The one way to push a frame to everyone connected to a session.

Services and workers call ``session_broadcast`` (sync) after commit; the
consumer forwards each message to its client as a frame. Broadcasts are the
fast path and at-most-once: if Redis is down the frame is dropped (and logged),
never raised into the caller's already-committed work. Clients notice missing
``event`` frames by their ``seq`` and the server refills them from PostgreSQL.

Usage::

    from django.db import transaction
    from apps.realtime.broadcast import session_broadcast

    transaction.on_commit(lambda: session_broadcast(session_id=sid, message={"type": "suggestion", ...}))

``message`` must be JSON-serialisable with a ``type`` key; it reaches clients
unchanged, except ``event`` messages, which each connection delivers in ``seq``
order without duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer

from apps.realtime import presence

logger = logging.getLogger(__name__)

# The handler name on SessionConsumer ("session.message" -> session_message).
GROUP_MESSAGE_TYPE = "session.message"


# A sync caller waits this long for its send; past it the push is dropped (and logged).
SYNC_SEND_TIMEOUT_S = 5.0


class _SendLoop:
    """One event loop per process, on a thread of its own, for channel-layer sends from sync code.

    ``async_to_sync`` outside an event loop (gunicorn's threads, Celery tasks)
    starts a new loop per call, and the channel layer opens a Redis connection
    per loop: one connect and close per broadcast. Here every sync send of the
    process shares one loop and so one connection. A forked child starts its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or not (self._thread and self._thread.is_alive()):
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="channel-layer-send", daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def run(self, send: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(_call(send, *args), self._running_loop())
        try:
            return future.result(timeout=SYNC_SEND_TIMEOUT_S)
        except BaseException:
            future.cancel()
            raise


async def _call(send: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return await send(*args)


_send_loop = _SendLoop()


def channel_layer_send_sync(send: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run a channel-layer coroutine function (``layer.group_send``) from sync code, on the process's send loop."""
    return _send_loop.run(send, *args)


def session_group_name(session_id: Any) -> str:
    """The channel-layer group of one session (the layer adds this run's prefix)."""
    return f"session.{session_id}"


def user_group_name(user_id: Any) -> str:
    """The channel-layer group of every socket one user holds, on any session (revocation)."""
    return f"user.{user_id}"


# The handler name on SessionConsumer ("access.revoked" -> access_revoked).
ACCESS_REVOKED_TYPE = "access.revoked"


def access_revoke(*, user_id: Any, reason: str, session_id: Any = None, token_digest: str | None = None) -> None:
    """Close the user's sockets (on ``session_id`` only, or with ``token_digest`` only, if given). Sync; after commit.

    At most once like every push; each socket also re-checks its access on the
    frames it serves and on its heartbeat, which catches a lost push.
    """
    message = {
        "type": ACCESS_REVOKED_TYPE,
        "reason": reason,
        "session_id": None if session_id is None else str(session_id),
        "token": token_digest,
    }
    try:
        channel_layer_send_sync(get_channel_layer().group_send, user_group_name(user_id), message)
    except Exception:
        logger.warning("revocation push dropped", exc_info=True, extra={"user_id": user_id, "reason": reason})


def session_access_revoke(*, user_id: Any, session_id: Any, reason: str) -> None:
    """The context hook ``access_revoked``: one user loses one session."""
    access_revoke(user_id=user_id, session_id=session_id, reason=reason)


def _group_message(message: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("A broadcast message is a dict with a string 'type'.")
    return {"type": GROUP_MESSAGE_TYPE, "message": message}


async def session_broadcast_async(*, session_id: Any, message: dict[str, Any]) -> None:
    """``session_broadcast`` for code already on an event loop (consumers)."""
    layer = get_channel_layer()
    await layer.group_send(session_group_name(session_id), _group_message(message))


def session_broadcast(*, session_id: Any, message: dict[str, Any]) -> None:
    """Send ``message`` to every connection of the session. Sync; call after commit.

    Never raises for a broken channel layer (the caller's work is committed;
    clients recover missed events by seq), only for a malformed message.
    """
    group_message = _group_message(message)
    layer = get_channel_layer()
    try:
        channel_layer_send_sync(layer.group_send, session_group_name(session_id), group_message)
    except Exception:
        logger.warning(
            "broadcast dropped", exc_info=True, extra={"session_id": str(session_id), "frame": message.get("type")}
        )
        return
    # The last hop of a request's trail: this line carries the correlation id of
    # the REST call, frame or task that caused it (DEBUG: one per broadcast).
    logger.debug("broadcast sent", extra={"session_id": str(session_id), "frame": message.get("type")})


def context_events_broadcast(*, session_id: Any, events: list[dict[str, Any]]) -> None:
    """Broadcast freshly committed context events (``context_event_to_dict`` shapes).

    One group message per append: a batch travels as one ``events`` message and
    each connection unpacks it into ``event`` frames in seq order.
    """
    if not events:
        return
    if len(events) == 1:
        session_broadcast(session_id=session_id, message={"type": "event", **events[0]})
    else:
        session_broadcast(session_id=session_id, message={"type": "events", "events": events})


def presence_set_ai_state(*, session_id: Any, state: str | None) -> None:
    """Show (``"queued"``, ``"generating"``) or clear (``None``) the session's AI state.

    Stored in Redis with a TTL (AI_STATE_TTL_S) so a worker that dies mid-request
    cannot leave it on forever, and broadcast as a ``presence`` frame
    ``{"type": "presence", "event": "ai_state", "ai_state": state}``.
    """
    if state is not None and state not in presence.AI_STATES:
        raise ValueError(f"AI state must be one of {presence.AI_STATES} or None, got {state!r}.")
    try:
        presence.ai_state_store(session_id=session_id, state=state)
    except Exception:
        logger.warning("ai state not stored", exc_info=True, extra={"session_id": str(session_id)})
    session_broadcast(
        session_id=session_id,
        message={"type": "presence", "event": "ai_state", "user": None, "ai_state": state},
    )


async def channel_layer_check(*, timeout: float) -> None:
    """Readiness: one message through the channel layer and back, leaving nothing behind.

    The pub/sub layer subscribes a channel on first use and unsubscribes only
    when a receive on it is cancelled; a probe that merely receives once would
    leak one subscription per call (one a second under HAProxy). Raises on
    failure or after ``timeout`` seconds.
    """
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = await layer.new_channel(prefix="readyz.")
    token = uuid.uuid4().hex
    try:
        async with asyncio.timeout(timeout):
            await layer.send(channel, {"type": "ops.readyz", "token": token})
            message = await layer.receive(channel)
    finally:
        cleanup = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0)
        cleanup.cancel()
        await asyncio.gather(cleanup, return_exceptions=True)
    if message.get("token") != token:
        raise RuntimeError("channel layer returned a different message")
