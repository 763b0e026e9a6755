"""Who is online in a session, who is typing, and the session's AI state, in Redis.

Keys (all under ``settings.REDIS_KEY_PREFIX``, so test runs never share them):

- ``<p>:rt:presence:<session>`` sorted set, member = channel name of one
  connection, score = the time it expires unless refreshed (heartbeat);
- ``<p>:rt:conns:<session>`` hash, channel name -> ``{"user", "state"}``;
- ``<p>:rt:typing:<session>`` sorted set, username -> expiry time;
- ``<p>:rt:ai:<session>`` string with a TTL, the AI state (``queued``/``generating``);
- ``<p>:rt:user_conns:<user id>`` sorted set, channel name -> expiry (connection cap).

Scores are expiry times rather than Redis key TTLs because a TTL cannot expire
one member of a set: a server process that dies leaves its members behind, and
any live connection's heartbeat sweeps them (``presence_sweep``) and tells the
session who left.

The consumer side is async (``redis.asyncio``, one client per event loop); the
AI state setter runs in sync code (services, Celery workers) with a sync client.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from typing import Any

import redis
from django.conf import settings
from redis import asyncio as aioredis

# Most present first: a user with one active and one idle tab shows as active.
_STATE_RANK = {"active": 0, "idle": 1, "away": 2}
PRESENCE_STATES = tuple(_STATE_RANK)
AI_STATES = ("queued", "generating")

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()
_sync_client: redis.Redis | None = None


def _key(*parts: Any) -> str:
    return ":".join([settings.REDIS_KEY_PREFIX, "rt", *(str(p) for p in parts)])


def presence_key(session_id: Any) -> str:
    return _key("presence", session_id)


def conns_key(session_id: Any) -> str:
    return _key("conns", session_id)


def typing_key(session_id: Any) -> str:
    return _key("typing", session_id)


def ai_state_key(session_id: Any) -> str:
    return _key("ai", session_id)


def user_conns_key(user_id: Any) -> str:
    return _key("user_conns", user_id)


def _client_kwargs() -> dict[str, Any]:
    # Short timeouts: presence is advisory; a stopped Redis must not stall a
    # WebSocket handler or a worker for long.
    return {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}


def async_client() -> aioredis.Redis:
    """The redis.asyncio client of the running event loop (clients cannot cross loops)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        # A blocking pool: under a burst (1,000 sockets connecting on a busy
        # loop, every command holding its connection until the loop reads the
        # reply) commands wait up to 5 s for a connection instead of failing
        # at redis-py's cap of 100.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=256, timeout=5.0, **_client_kwargs()
        )
        client = aioredis.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client


def sync_client() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(settings.REDIS_URL, **_client_kwargs())
    return _sync_client


def _key_ttl() -> int:
    # Whole keys outlive their members a little, so an abandoned session's
    # presence disappears on its own.
    return int(settings.PRESENCE_TTL_S * 4) + 1


def _decode_conns(raw: dict[bytes, bytes] | list[bytes | None], members: list[bytes]) -> list[dict[str, str]]:
    values = raw if isinstance(raw, list) else [raw.get(m) for m in members]
    out = []
    for value in values:
        if value is None:
            continue
        try:
            out.append(json.loads(value))
        except (TypeError, ValueError):
            continue
    return out


def _aggregate(conns: list[dict[str, str]]) -> list[dict[str, str]]:
    best: dict[str, str] = {}
    for conn in conns:
        user, state = conn.get("user"), conn.get("state", "active")
        if not user:
            continue
        if user not in best or _STATE_RANK.get(state, 9) < _STATE_RANK.get(best[user], 9):
            best[user] = state
    return [{"user": user, "state": best[user]} for user in sorted(best)]


async def _live_conns(*, session_id: Any, exclude: str | None = None) -> list[dict[str, str]]:
    """The live connections' ``{"user", "state"}``, in one round trip."""
    async with async_client().pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(presence_key(session_id), time.time(), "+inf")
        pipe.hgetall(conns_key(session_id))
        members, conns = await pipe.execute()
    live = [m for m in members if m.decode() != exclude]
    return _decode_conns(conns, live)


async def presence_online(*, session_id: Any) -> list[dict[str, str]]:
    """Users with at least one live connection, each with their most present state."""
    return _aggregate(await _live_conns(session_id=session_id))


async def presence_hello(*, session_id: Any) -> tuple[list[dict[str, str]], list[str], str | None]:
    """Online users, typing users and the AI state for a ``hello``, in one round trip."""
    now = time.time()
    async with async_client().pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(presence_key(session_id), now, "+inf")
        pipe.hgetall(conns_key(session_id))
        pipe.zrangebyscore(typing_key(session_id), now, "+inf")
        pipe.get(ai_state_key(session_id))
        members, conns, typing, ai_state = await pipe.execute()
    online = _aggregate(_decode_conns(conns, members))
    return online, sorted(m.decode() for m in typing), ai_state.decode() if ai_state else None


async def _user_is_online(*, session_id: Any, username: str, exclude: str | None = None) -> bool:
    conns = await _live_conns(session_id=session_id, exclude=exclude)
    return any(c.get("user") == username for c in conns)


async def presence_join(*, session_id: Any, channel_name: str, username: str, state: str = "active") -> bool:
    """Register one connection; True when the user was not online before (a join)."""
    was_online = await _user_is_online(session_id=session_id, username=username, exclude=channel_name)
    await presence_refresh(session_id=session_id, channel_name=channel_name, username=username, state=state)
    return not was_online


async def presence_refresh(*, session_id: Any, channel_name: str, username: str, state: str | None = None) -> bool:
    """The heartbeat: push this connection's expiry forward.

    Returns False when the entry was gone (Redis restarted or flushed, or the
    entry was swept): the caller then re-subscribes and catches up, since its
    group membership is gone too.
    """
    client = async_client()
    pkey, ckey = presence_key(session_id), conns_key(session_id)
    expires_at = time.time() + settings.PRESENCE_TTL_S
    if state is None:
        raw = await client.hget(ckey, channel_name)
        existed = raw is not None
        state = json.loads(raw).get("state", "active") if raw else "active"
    else:
        existed = await client.hexists(ckey, channel_name)
    async with client.pipeline(transaction=True) as pipe:
        pipe.zadd(pkey, {channel_name: expires_at})
        pipe.hset(ckey, channel_name, json.dumps({"user": username, "state": state}))
        pipe.expire(pkey, _key_ttl())
        pipe.expire(ckey, _key_ttl())
        await pipe.execute()
    return bool(existed)


async def presence_heartbeat(*, session_id: Any, channel_name: str, user_id: Any) -> tuple[bool, bool]:
    """One connection's beat in one round trip: ``(entry still there, stale entries to sweep)``.

    ZADD XX only refreshes an existing entry; a missing one (Redis restarted or
    flushed) is reported so the caller re-registers and catches up.
    """
    now = time.time()
    expires_at = now + settings.PRESENCE_TTL_S
    pkey, ckey, ukey = presence_key(session_id), conns_key(session_id), user_conns_key(user_id)
    async with async_client().pipeline(transaction=False) as pipe:
        pipe.zadd(pkey, {channel_name: expires_at}, xx=True, ch=True)
        pipe.zadd(ukey, {channel_name: expires_at})
        pipe.expire(pkey, _key_ttl())
        pipe.expire(ckey, _key_ttl())
        pipe.expire(ukey, _key_ttl())
        pipe.zcount(pkey, "-inf", now)
        refreshed, _, _, _, _, stale = await pipe.execute()
    return bool(refreshed), bool(stale)


async def presence_leave(*, session_id: Any, channel_name: str, username: str) -> bool:
    """Remove one connection; True when the user has no other live connection (a leave)."""
    client = async_client()
    async with client.pipeline(transaction=True) as pipe:
        pipe.zrem(presence_key(session_id), channel_name)
        pipe.hdel(conns_key(session_id), channel_name)
        await pipe.execute()
    return not await _user_is_online(session_id=session_id, username=username)


async def presence_sweep(*, session_id: Any) -> list[str]:
    """Drop connections whose heartbeat stopped; the users that left as a result.

    ZREM tells exactly one sweeper that it removed a member, so each departure
    is announced once even when many connections sweep at the same moment.
    """
    client = async_client()
    pkey, ckey = presence_key(session_id), conns_key(session_id)
    stale = await client.zrangebyscore(pkey, "-inf", time.time())
    if not stale:
        return []
    values = await client.hmget(ckey, stale)
    users = set()
    for member, value in zip(stale, values, strict=True):
        if await client.zrem(pkey, member):
            await client.hdel(ckey, member)
            if value:
                try:
                    users.add(json.loads(value)["user"])
                except (TypeError, ValueError, KeyError):
                    continue
    left = []
    for username in sorted(users):
        if not await _user_is_online(session_id=session_id, username=username):
            left.append(username)
    return left


async def typing_set(*, session_id: Any, username: str, active: bool) -> None:
    client = async_client()
    key = typing_key(session_id)
    if active:
        async with client.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {username: time.time() + settings.TYPING_TTL_S})
            pipe.expire(key, int(settings.TYPING_TTL_S * 4) + 1)
            await pipe.execute()
    else:
        await client.zrem(key, username)


async def typing_users(*, session_id: Any) -> list[str]:
    members = await async_client().zrangebyscore(typing_key(session_id), time.time(), "+inf")
    return sorted(m.decode() for m in members)


async def ai_state_get(*, session_id: Any) -> str | None:
    value = await async_client().get(ai_state_key(session_id))
    return value.decode() if value else None


def ai_state_store(*, session_id: Any, state: str | None) -> None:
    """Sync: store (or clear) the AI state; it expires on its own after AI_STATE_TTL_S."""
    client = sync_client()
    if state is None:
        client.delete(ai_state_key(session_id))
    else:
        client.set(ai_state_key(session_id), state, ex=settings.AI_STATE_TTL_S)


async def connection_slot_acquire(*, user_id: Any, channel_name: str) -> bool:
    """Take one of the user's WS_MAX_CONNECTIONS_PER_USER slots (across all sessions and servers).

    Add first, count second, and back out when over: two racing connects may
    both be refused, never both admitted over the cap.
    """
    client = async_client()
    key = user_conns_key(user_id)
    now = time.time()
    async with client.pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zadd(key, {channel_name: now + settings.PRESENCE_TTL_S})
        pipe.zcard(key)
        pipe.expire(key, _key_ttl())
        _, _, count, _ = await pipe.execute()
    if count > settings.WS_MAX_CONNECTIONS_PER_USER:
        await client.zrem(key, channel_name)
        return False
    return True


async def connection_slot_refresh(*, user_id: Any, channel_name: str) -> None:
    client = async_client()
    key = user_conns_key(user_id)
    async with client.pipeline(transaction=True) as pipe:
        pipe.zadd(key, {channel_name: time.time() + settings.PRESENCE_TTL_S})
        pipe.expire(key, _key_ttl())
        await pipe.execute()


async def connection_slot_release(*, user_id: Any, channel_name: str) -> None:
    await async_client().zrem(user_conns_key(user_id), channel_name)
