"""The session WebSocket: ``/ws/sessions/<id>/``. Protocol and close codes: apps/realtime/__init__.py.

Long on purpose: one consumer class is one connection's state (membership,
delivered seq, the delivery lock, heartbeat task); its frame handlers, the
ordered delivery with gap refill and the resume replay all read and advance
that state, and splitting them apart would scatter the ordering invariant.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from apps.caching.auth import token_digest
from apps.common.exceptions import ApplicationError, NotFound, ValidationFailed
from apps.common.logging import correlation_id, correlation_id_accept, set_correlation_id
from apps.common.metrics import WS_CONNECTIONS, WS_MESSAGES
from apps.common.throttling import ws_frame_throttle_check
from apps.context import selectors as context_selectors
from apps.context import services as context_services
from apps.context.validation import CLIENT_MSG_ID_MAX, event_input_from_frame
from apps.realtime import presence, revocation
from apps.realtime.auth import origin_allowed, selected_subprotocol
from apps.realtime.broadcast import session_broadcast_async, session_group_name, user_group_name
from apps.realtime.layer_health import layer_probe_ensure
from apps.realtime.limits import StrikeCounter, TokenBucket

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = revocation.CLOSE_UNAUTHENTICATED
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = revocation.CLOSE_NOT_FOUND
CLOSE_RATE_LIMITED = 4429
# The client stopped reading: its outgoing frames would otherwise pile up in this process.
CLOSE_TOO_SLOW = 4408
CLOSE_TRY_AGAIN = 1013


@dataclass(frozen=True)
class Membership:
    session: Any
    username: str
    role: str
    can_write: bool


def _membership(*, session_id: str, user: Any) -> Membership | None:
    try:
        session = context_selectors.session_get_for_user(session_id=session_id, user=user)
    except NotFound:
        return None
    participant = context_selectors.participant_get(session_id=session.pk, user=user)
    if participant is None:
        return None
    return Membership(
        session=session, username=user.get_username(), role=participant.role, can_write=participant.can_write
    )


def _append(*, session: Any, user: Any, event_type: str, data: dict[str, Any], client_msg_id: str) -> tuple[dict, bool]:
    stored = context_services.context_event_append(
        session=session,
        author=user,
        events=[context_services.EventInput(event_type=event_type, data=data, client_msg_id=client_msg_id)],
    )[0]
    return context_selectors.context_event_to_dict(stored), bool(getattr(stored, "was_created", False))


def _events_between(*, session: Any, after_seq: int, upto_seq: int, limit: int) -> list[dict[str, Any]]:
    # One replay page: at most `limit` events and about WS_REPLAY_PAGE_MAX_BYTES (at least one).
    page = context_selectors.context_event_page(
        session=session,
        after_seq=after_seq,
        upto_seq=upto_seq,
        limit=limit,
        max_bytes=settings.WS_REPLAY_PAGE_MAX_BYTES,
    )
    return [context_selectors.context_event_to_dict(e) for e in page.events]


def _last_seq(*, session_id: Any) -> int:
    return context_selectors.session_last_seq(session_id=session_id)


membership_get = database_sync_to_async(_membership)
access_problem_get = database_sync_to_async(revocation.access_problem)
event_append = database_sync_to_async(_append)
events_between = database_sync_to_async(_events_between)
last_seq_get = database_sync_to_async(_last_seq)


def _frame(content: dict[str, Any]) -> str:
    return json.dumps(content, separators=(",", ":"), default=str)


class SessionConsumer(AsyncWebsocketConsumer):
    """One client in one session.

    Handlers run one at a time per connection (channels dispatches serially),
    so ``delivered_seq`` needs no lock: live events, gap fills and resumes are
    interleaved only at message boundaries.
    """

    membership: Membership | None = None
    delivered_seq: int = 0
    _heartbeat: asyncio.Task | None = None
    _registered: bool = False
    _cleaned: bool = False
    _counted: bool = False  # counted in WS_CONNECTIONS (accepted and registered)
    _access_checked_at: float = 0.0  # monotonic time of the last access re-check that passed
    _token_key: str | None = None
    _expiry: asyncio.TimerHandle | None = None
    _stalled: bool = False  # a send timed out: the client stopped reading

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._delivery_lock = asyncio.Lock()

    # --- connection lifecycle ------------------------------------------------

    def _joined(self) -> Membership:
        """The membership ``connect`` found; frames and loops run only after it was set."""
        if self.membership is None:
            raise RuntimeError("the socket has no membership: not joined, or already left")
        return self.membership

    async def connect(self) -> None:
        self.session_id = str(self.scope["url_route"]["kwargs"]["session_id"])
        self.user = self.scope.get("user")
        self._token_key = self.scope.get("token_key")
        subprotocol = selected_subprotocol(self.scope)
        if not origin_allowed(self.scope):
            return await self._refuse(CLOSE_FORBIDDEN, subprotocol)
        if self.user is None or not self.user.is_authenticated:
            return await self._refuse(CLOSE_UNAUTHENTICATED, subprotocol)
        membership = await membership_get(session_id=self.session_id, user=self.user)
        if membership is None:
            # Non-participant and nonexistent session look the same.
            return await self._refuse(CLOSE_NOT_FOUND, subprotocol)
        self.membership = membership
        self.username = membership.username
        self.session_id = str(membership.session.pk)
        self.group = session_group_name(self.session_id)
        self.user_group = user_group_name(self.user.pk)
        self.bucket = TokenBucket(rate=settings.WS_RATE_PER_SECOND, burst=settings.WS_RATE_BURST)
        self.strikes = StrikeCounter(limit=settings.WS_RATE_STRIKES)
        self.typing_sent_at = 0.0
        try:
            if not await presence.connection_slot_acquire(user_id=self.user.pk, channel_name=self.channel_name):
                return await self._refuse(CLOSE_RATE_LIMITED, subprotocol)
            self._registered = True
            # Subscribe BEFORE reading last_seq: an event committed after the read
            # arrives live; one committed before it has seq <= last_seq and its
            # live copy is dropped. Nothing is lost, nothing doubled.
            await self.channel_layer.group_add(self.group, self.channel_name)
            # Revocations (token, user, membership) are pushed to the user's group.
            await self.channel_layer.group_add(self.user_group, self.channel_name)
            last_seq = await last_seq_get(session_id=self.session_id)
            joined = await presence.presence_join(
                session_id=self.session_id, channel_name=self.channel_name, username=membership.username
            )
            online, typing, ai_state = await presence.presence_hello(session_id=self.session_id)
        except Exception:
            logger.warning("websocket connect: Redis or PostgreSQL unavailable", exc_info=True)
            await self._cleanup()
            return await self._refuse(CLOSE_TRY_AGAIN, subprotocol)
        await self.accept(subprotocol)
        layer_probe_ensure()  # this loop's Redis connections are watched (apps/realtime/layer_health.py)
        WS_CONNECTIONS.inc()
        self._counted = True
        self._access_checked_at = time.monotonic()
        expires_at = self.scope.get("token_expires_at")
        if expires_at is not None:
            # The token's end closes the socket even if it sends and receives nothing.
            delay = max(0.0, (expires_at - timezone.now()).total_seconds())
            self._expiry = asyncio.get_running_loop().call_later(
                delay, lambda: asyncio.ensure_future(self._revoke("token_expired"))
            )
        self.delivered_seq = last_seq
        session = membership.session
        await self._send(
            {
                "type": "hello",
                "session": {"id": self.session_id, "title": session.title, "state": session.state},
                "user": {"username": membership.username, "role": membership.role},
                "last_seq": last_seq,
                "online": online,
                "typing": typing,
                "ai_state": ai_state,
                "limits": {
                    "max_frame_bytes": settings.WS_MAX_FRAME_BYTES,
                    "messages_per_second": settings.WS_RATE_PER_SECOND,
                    "resume_max_events": settings.WS_RESUME_MAX_EVENTS,
                },
                "heartbeat_s": settings.PRESENCE_HEARTBEAT_S,
            }
        )
        await self._resume_at_connect(last_seq)
        if joined:
            await self._broadcast_presence("join", state="active")
        self._heartbeat = asyncio.ensure_future(self._heartbeat_loop())

    async def _resume_at_connect(self, last_seq: int) -> None:
        """``?after_seq=N`` on the handshake: replay (N, last_seq] before any live event.

        A reconnecting client should resume this way rather than with a
        ``resume`` frame: live events queue behind this handler (channels
        dispatches serially), so the client gets every event once and in
        order. A ``resume`` frame arrives after live events may have been sent,
        and replays what it asks for, those included.
        """
        values = parse_qs((self.scope.get("query_string") or b"").decode("latin-1")).get("after_seq")
        if not values:
            return
        raw = values[0]
        after_seq = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else -1
        if after_seq < 0:
            await self._error("invalid", "after_seq must be a non-negative integer.", {"after_seq": raw[:40]})
        elif after_seq > last_seq:
            await self._error(
                "invalid", "after_seq is ahead of the session.", {"after_seq": after_seq, "last_seq": last_seq}
            )
        elif after_seq < last_seq:
            self.delivered_seq = after_seq
            await self._fill(after_seq=after_seq, upto_seq=last_seq)

    async def _refuse(self, code: int, subprotocol: str | None) -> None:
        # Accept first: a close before accept becomes an HTTP 403 and the
        # client never sees the code that says why.
        await self.accept(subprotocol)
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        await self._cleanup()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Also on a crash (the channel layer lost Redis): the heartbeat task
            # must not outlive the connection.
            await self._cleanup()

    async def _cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        if self._counted:
            WS_CONNECTIONS.dec()
            self._counted = False
        if self._expiry is not None:
            self._expiry.cancel()
        if self._heartbeat is not None and self._heartbeat is not asyncio.current_task():
            # (The heartbeat itself may be closing a revoked socket: it returns on its own.)
            self._heartbeat.cancel()
        if not self._registered or self.membership is None:
            return
        try:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.channel_layer.group_discard(self.user_group, self.channel_name)
            await presence.connection_slot_release(user_id=self.user.pk, channel_name=self.channel_name)
            left = await presence.presence_leave(
                session_id=self.session_id, channel_name=self.channel_name, username=self.membership.username
            )
            if left:
                await self._broadcast_presence("leave", user=self.membership.username, state=None)
        except Exception:
            # Redis is gone: the entries expire (PRESENCE_TTL_S) and get swept.
            logger.info("websocket cleanup skipped: Redis unavailable", exc_info=True)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels dispatches one message at a time; the lock extends that to
        # the heartbeat's catch-up, so delivered_seq has one writer at a time.
        async with self._delivery_lock:
            await super().dispatch(message)

    async def _heartbeat_loop(self) -> None:
        self._joined()
        recover_until = 0.0
        trouble = False
        while True:
            # Jitter: connections opened together must not all beat together.
            await asyncio.sleep(settings.PRESENCE_HEARTBEAT_S * random.uniform(0.8, 1.0))  # noqa: S311
            if not await self._access_ok(force=True):
                return
            try:
                existed, stale = await presence.presence_heartbeat(
                    session_id=self.session_id, channel_name=self.channel_name, user_id=self.user.pk
                )
                if not existed:
                    # Redis lost our state (restart, flush): re-register and re-join
                    # the group (the list-based layer keeps membership in Redis).
                    await presence.presence_refresh(
                        session_id=self.session_id, channel_name=self.channel_name, username=self.username
                    )
                    await self.channel_layer.group_add(self.group, self.channel_name)
                    await self.channel_layer.group_add(self.user_group, self.channel_name)
                    await self._broadcast_presence("join", state="active")
                if trouble or not existed:
                    # Broadcasts were lost while Redis was away, and the layer
                    # resubscribes lazily: catch up from PostgreSQL for a few
                    # beats, so events published before it is back are not missed.
                    recover_until = time.monotonic() + max(3 * settings.PRESENCE_HEARTBEAT_S, 3.0)
                    trouble = False
                if time.monotonic() < recover_until:
                    async with self._delivery_lock:
                        await self._catch_up()
                if stale:
                    for username in await presence.presence_sweep(session_id=self.session_id):
                        await self._broadcast_presence("leave", user=username, state=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                trouble = True
                logger.info("presence heartbeat failed; retrying next beat", exc_info=True)

    # --- client -> server ------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.membership is None or self._stalled:
            return
        if not self.bucket.take():
            if self.strikes.strike():
                await self._error("rate_limited", "Too many messages; closing.", {"close_code": CLOSE_RATE_LIMITED})
                await self.close(code=CLOSE_RATE_LIMITED)
                return
            await self._error("rate_limited", "Too many messages.", {"retry_after_ms": self.bucket.retry_after_ms()})
            return
        if text_data is None:
            await self._error("unsupported_frame", "Send JSON text frames; binary frames are not supported.")
            return
        size = len(text_data.encode("utf-8"))
        if size > settings.WS_MAX_FRAME_BYTES:
            await self._error(
                "frame_too_large", "Frame is too large.", {"max_bytes": settings.WS_MAX_FRAME_BYTES, "bytes": size}
            )
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            # RecursionError: 96 KiB of '[' is a few thousand levels deep.
            await self._error("malformed_json", "Frame is not valid JSON.")
            return
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self._error("invalid_frame", "A frame is a JSON object with a string 'type'.")
            return
        handler = self._handlers.get(content["type"])
        WS_MESSAGES.labels(direction="in", type=content["type"] if handler is not None else "unknown").inc()
        # Writes and history always re-check; other frames at most every WS_ACCESS_RECHECK_S.
        if not await self._access_ok(force=content["type"] in ("context_update", "resume")):
            return
        if handler is not None and not await self._user_budget_ok():
            return
        if handler is None:
            await self._error(
                "unknown_type", f"Unknown frame type {content['type'][:40]!r}.", {"allowed": sorted(self._handlers)}
            )
            return
        # Each frame is one unit of work: its correlation id (the client's
        # optional "correlation_id", else a new one) goes on every log line and
        # into the outbox rows and task headers it causes, as for a REST call.
        token = set_correlation_id(correlation_id_accept(content.get("correlation_id")))
        try:
            await handler(self, content)
        except ApplicationError as exc:
            # The one mapping of ApplicationError for WebSockets.
            await self._send({"type": "error", **exc.as_dict(), **self._echo_id(content)})
        except DatabaseError:
            # A failed query is this frame's failure, not the connection's: answer it
            # (the client may retry; a client_msg_id makes the retry safe) and stay open.
            logger.warning("websocket frame failed on the database", exc_info=True)
            await self._send(
                {
                    "type": "error",
                    "code": "server_error",
                    "message": "The server could not process this frame; retry it.",
                    "details": {"retryable": True},
                    **self._echo_id(content),
                }
            )
        finally:
            correlation_id.reset(token)

    @staticmethod
    def _echo_id(content: dict[str, Any]) -> dict[str, Any]:
        msg_id = content.get("client_msg_id")
        return {"client_msg_id": msg_id} if isinstance(msg_id, str) and len(msg_id) <= CLIENT_MSG_ID_MAX else {}

    async def _on_context_update(self, content: dict[str, Any]) -> None:
        # The same validator as the REST append (apps/context/validation.py).
        event_type, data, client_msg_id = event_input_from_frame(content)
        membership = self._joined()
        event, created = await event_append(
            session=membership.session,
            user=self.user,
            event_type=event_type,
            data=data,
            client_msg_id=client_msg_id,
        )
        if created:
            # Deliver our own event now (its live copy is dropped as a duplicate),
            # so the sender sees the event before its ack.
            await self._deliver([event])
        await self._send(
            {"type": "ack", "client_msg_id": client_msg_id or None, "seq": event["seq"], "duplicate": not created}
        )

    async def _on_resume(self, content: dict[str, Any]) -> None:
        after_seq = content.get("after_seq")
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise ValidationFailed("Invalid resume.", details={"after_seq": ["Must be a non-negative integer."]})
        last_seq = await last_seq_get(session_id=self.session_id)
        if after_seq > last_seq:
            raise ValidationFailed(
                "after_seq is ahead of the session.", details={"after_seq": after_seq, "last_seq": last_seq}
            )
        await self._replay(after_seq=after_seq, upto_seq=last_seq)

    async def _on_ping(self, content: dict[str, Any]) -> None:
        t = content.get("t")
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | float | str)):
            raise ValidationFailed("Invalid ping.", details={"t": ["Must be a number or a string."]})
        await self._send({"type": "pong", "t": t, "server_time": time.time()})

    async def _on_typing(self, content: dict[str, Any]) -> None:
        active = content.get("active", True)
        if not isinstance(active, bool):
            raise ValidationFailed("Invalid typing.", details={"active": ["Must be a boolean."]})
        membership = self._joined()
        await presence.typing_set(session_id=self.session_id, username=membership.username, active=active)
        now = time.monotonic()
        # Keystrokes arrive many per second; others need one indicator per second
        # (it lasts TYPING_TTL_S), and every stop.
        if active and now - self.typing_sent_at < 1.0:
            return
        self.typing_sent_at = now if active else 0.0
        await session_broadcast_async(
            session_id=self.session_id,
            message={
                "type": "typing",
                "user": membership.username,
                "active": active,
                "ttl_ms": int(settings.TYPING_TTL_S * 1000),
            },
        )

    async def _on_presence(self, content: dict[str, Any]) -> None:
        state = content.get("state")
        if state not in presence.PRESENCE_STATES:
            allowed = list(presence.PRESENCE_STATES)
            raise ValidationFailed("Invalid presence.", details={"state": [f"Must be one of {allowed}."]})
        membership = self._joined()
        await presence.presence_refresh(
            session_id=self.session_id, channel_name=self.channel_name, username=membership.username, state=state
        )
        await self._broadcast_presence("state", state=state)

    _handlers = {
        "context_update": _on_context_update,
        "resume": _on_resume,
        "ping": _on_ping,
        "typing": _on_typing,
        "presence": _on_presence,
    }

    # --- server -> client ------------------------------------------------------

    async def session_message(self, event: dict[str, Any]) -> None:
        """A group message from ``session_broadcast``."""
        if self.membership is None or self._stalled or not await self._access_ok():
            return
        message = event.get("message") or {}
        kind = message.get("type")
        if kind == "event":
            await self._deliver([message])
        elif kind == "events":
            await self._deliver(message.get("events") or [])
        elif kind == "typing" and message.get("user") == self.membership.username:
            return
        elif kind == "presence" and message.get("event") == "removed" and message.get("user") == self.username:
            # Removed from the session: no more of its events, same code as an outsider.
            await self._send(message)
            await self._revoke("removed", notify=False)
        elif kind == "session" and message.get("event") == "deleted":
            await self._send(message)
            await self._revoke("session_deleted", notify=False)
        else:
            await self._send(message)

    async def access_revoked(self, event: dict[str, Any]) -> None:
        """A push from ``broadcast.access_revoke`` to this user's group."""
        if self.membership is None:
            return
        if event.get("session_id") not in (None, self.session_id):
            return
        if event.get("token") is not None and event["token"] != token_digest(self._token_key or ""):
            return  # another of the user's tokens
        await self._revoke(str(event.get("reason") or "token_revoked"))

    async def _user_budget_ok(self) -> bool:
        """The user's budget across all their sockets and their REST calls (DefaultThrottle's counters)."""
        client = self.scope.get("client") or (None, None)
        try:
            wait = await sync_to_async(ws_frame_throttle_check, thread_sensitive=False)(
                user_id=self.user.pk, ip=client[0]
            )
        except Exception:
            logger.info("throttle check failed; frame allowed", exc_info=True)
            return True
        if wait is None:
            return True
        if self.strikes.strike():
            await self._error("rate_limited", "Too many requests; closing.", {"close_code": CLOSE_RATE_LIMITED})
            await self.close(code=CLOSE_RATE_LIMITED)
            return False
        await self._error(
            "rate_limited",
            "Too many requests for this user (REST and WebSocket together).",
            {"retry_after_ms": max(1, int(wait * 1000)), "scope": "user"},
        )
        return False

    async def _access_ok(self, *, force: bool = False) -> bool:
        """Whether this socket may still serve its session; closes it when not."""
        if self.membership is None:
            return False
        now = time.monotonic()
        if not force and now - self._access_checked_at < settings.WS_ACCESS_RECHECK_S:
            return True
        try:
            problem = await access_problem_get(
                token_key=self._token_key or "", user_id=self.user.pk, session_id=self.session_id
            )
        except Exception:
            # Cache and database both failing: the frame itself will fail; keep the
            # last verdict rather than close every socket on an outage.
            logger.info("access re-check failed", exc_info=True)
            return True
        if problem is not None:
            await self._revoke(problem)
            return False
        self._access_checked_at = now
        return True

    async def _revoke(self, reason: str, *, notify: bool = True) -> None:
        """Stop serving at once: no more events, resumes or writes; tell the client why and close."""
        if self.membership is None:
            return
        code = revocation.CLOSE_CODES.get(reason, CLOSE_UNAUTHENTICATED)
        if notify:
            await self._send({"type": "revoked", "reason": reason, "close_code": code})
        await self.close(code=code, reason=reason)
        await self._cleanup()
        self.membership = None

    async def _catch_up(self) -> None:
        last_seq = await last_seq_get(session_id=self.session_id)
        if last_seq > self.delivered_seq:
            await self._fill(after_seq=self.delivered_seq, upto_seq=last_seq)

    async def _deliver(self, events: list[dict[str, Any]]) -> None:
        """Send live events in seq order: drop what was delivered, fill holes from PostgreSQL."""
        for event in sorted(events, key=lambda e: e["seq"]):
            seq = event["seq"]
            if seq <= self.delivered_seq:
                continue
            if seq > self.delivered_seq + 1:
                # A broadcast was lost or overtaken: the missing events are
                # committed (seq is allocated under the session row lock), so
                # PostgreSQL has them.
                await self._fill(after_seq=self.delivered_seq, upto_seq=seq - 1)
                if seq <= self.delivered_seq:
                    continue
            await self._send_event(event)

    async def _fill(self, *, after_seq: int, upto_seq: int) -> None:
        await self._replay(after_seq=after_seq, upto_seq=upto_seq)
        self.delivered_seq = max(self.delivered_seq, upto_seq)

    async def _replay(self, *, after_seq: int, upto_seq: int) -> None:
        """Send events (after_seq, upto_seq] from PostgreSQL in order, a page at a time."""
        if upto_seq - after_seq > settings.WS_RESUME_MAX_EVENTS:
            await self._send(
                {
                    "type": "resync_required",
                    "last_seq": upto_seq,
                    "after_seq": after_seq,
                    "max_events": settings.WS_RESUME_MAX_EVENTS,
                }
            )
            # The client refetches the snapshot; live delivery goes on after it.
            self.delivered_seq = max(self.delivered_seq, upto_seq)
            return
        membership = self._joined()
        cursor = after_seq
        while cursor < upto_seq:
            page = await events_between(
                session=membership.session, after_seq=cursor, upto_seq=upto_seq, limit=settings.WS_REPLAY_PAGE
            )
            if not page:
                break
            for event in page:
                await self._send({"type": "event", **event})
            cursor = page[-1]["seq"]
        self.delivered_seq = max(self.delivered_seq, upto_seq)

    async def _send_event(self, event: dict[str, Any]) -> None:
        frame = {"type": "event", **{k: v for k, v in event.items() if k != "type"}}
        await self._send(frame)
        self.delivered_seq = event["seq"]

    async def _broadcast_presence(self, kind: str, *, user: str | None = None, state: str | None = None) -> None:
        membership = self._joined()
        online = await presence.presence_online(session_id=self.session_id)
        ai_state = await presence.ai_state_get(session_id=self.session_id)
        await session_broadcast_async(
            session_id=self.session_id,
            message={
                "type": "presence",
                "event": kind,
                "user": user or membership.username,
                "state": state,
                "online": online,
                "ai_state": ai_state,
            },
        )

    async def _error(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        await self._send({"type": "error", "code": code, "message": message, "details": details or {}})

    async def _send(self, content: dict[str, Any]) -> None:
        if self._stalled:
            return
        try:
            # uvicorn's send waits while the socket's write buffer is over its high-water
            # mark (64 KiB): a client that stops reading blocks it here, and everything
            # pushed to this socket meanwhile waits in the channel layer's queue.
            async with asyncio.timeout(settings.WS_SEND_TIMEOUT_S):
                await self.send(text_data=_frame(content))
        except TimeoutError:
            self._stall()
            return
        WS_MESSAGES.labels(direction="out", type=str(content.get("type", "unknown"))).inc()

    def _stall(self) -> None:
        """Give up on a client that stopped reading: drop what comes next and close (4408)."""
        logger.info("websocket client stopped reading; closing", extra={"session_id": self.session_id})
        # From now on pushes are taken off the channel layer's queue and dropped.
        self._stalled = True
        # In the background: the close frame itself waits for buffer space (then the
        # transport is aborted), and this consumer must keep draining meanwhile.
        asyncio.ensure_future(self.close(code=CLOSE_TOO_SLOW, reason="client too slow"))


class NotFoundConsumer(AsyncWebsocketConsumer):
    """Any other WebSocket path: the same 4404 as an unknown session."""

    async def connect(self) -> None:
        await self.accept(selected_subprotocol(self.scope))
        await self.close(code=CLOSE_NOT_FOUND)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        raise StopConsumer()
