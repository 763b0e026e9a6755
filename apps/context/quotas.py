"""Per-user quota on stored events: at most ``EVENT_QUOTA_PER_USER`` per rolling ``EVENT_QUOTA_WINDOW_S``.

Every append (REST, WebSocket, internal callers) goes through
``context_event_append``, which reserves its events here before it writes and
gives back what it did not store (duplicates by ``client_msg_id``, a failed
transaction). Over the quota the append is refused with ``EventQuotaExceeded``
(429, ``Retry-After`` over REST; an ``error`` ``rate_limited`` frame over
WebSocket) and nothing is stored.

The counter is cheap: one Redis round trip (a Lua script over the user's 24
bucket counters of one twenty-fourth of the window each: an hour for a day), so
the window rolls by buckets and an event stops counting 23 to 24 hours after
it was stored. Reserving is atomic across every web process, so concurrent
appends cannot pass the quota together. Like the throttles, the quota fails
open when Redis is down: an outage of the counter must not stop every write.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.core.cache import cache
from redis.exceptions import RedisError

from apps.common.exceptions import ApplicationError

logger = logging.getLogger(__name__)

BUCKETS = 24

# KEYS: the user's bucket counters, oldest first (the last is the current one).
# ARGV: events to reserve, the quota, the buckets' TTL in seconds.
# Returns the count after reserving, or -i when refused: the i oldest buckets
# must leave the window before the events fit (BUCKETS + 1: they never fit).
_RESERVE_LUA = """
local counts = redis.call('MGET', unpack(KEYS))
local total = 0
for _, c in ipairs(counts) do if c then total = total + tonumber(c) end end
local n, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if total + n > limit then
  if n > limit then return -(#KEYS + 1) end
  local need, freed = total + n - limit, 0
  for i, c in ipairs(counts) do
    if c then freed = freed + tonumber(c) end
    if freed >= need then return -i end
  end
  return -(#KEYS + 1)
end
redis.call('INCRBY', KEYS[#KEYS], n)
redis.call('EXPIRE', KEYS[#KEYS], tonumber(ARGV[3]))
return total + n
"""


class EventQuotaExceeded(ApplicationError):
    """The user stored as many events as the quota allows in the rolling window."""

    code = "rate_limited"

    def __init__(self, *, retry_after: float, limit: int, window_s: int) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            f"At most {limit} stored events per user in {window_s} s; try again later.",
            details={
                "quota": "stored_events",
                "limit": limit,
                "window_seconds": window_s,
                "retry_after_seconds": seconds,
                "retry_after_ms": seconds * 1000,  # the unit of the WebSocket rate_limited frames
            },
            status_code=429,
        )
        self.retry_after = seconds


@dataclass(frozen=True)
class Reservation:
    """Events counted against a user's quota; ``release`` gives back those not stored."""

    key: str | None  # the bucket counted in; None: nothing counted (quota off, Redis down)
    count: int

    def release(self, unused: int) -> None:
        if self.key is None or unused <= 0:
            return
        try:
            _client().decrby(self.key, min(unused, self.count))
        except (RedisError, OSError):
            logger.warning("event quota: could not give back %s reserved events", unused)


# Nothing counted: the quota is off, Redis is down, or the append stores nothing new.
NO_RESERVATION = Reservation(key=None, count=0)
_redis: redis.Redis | None = None
_script: Any = None


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        # Fail fast, as the cache does: a stopped Redis must not hang an append.
        _redis = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5)
    return _redis


def event_quota_reserve(*, user_id: Any, count: int) -> Reservation:
    """Count ``count`` events against the user's quota; ``EventQuotaExceeded`` when they do not fit."""
    limit = settings.EVENT_QUOTA_PER_USER
    if limit <= 0 or count <= 0 or user_id is None:
        return NO_RESERVATION
    window = settings.EVENT_QUOTA_WINDOW_S
    bucket_s = max(1, window // BUCKETS)
    now = time.time()
    current = int(now // bucket_s)
    keys = [cache.make_key(f"quota:events:{user_id}:{index}") for index in range(current - BUCKETS + 1, current + 1)]
    global _script
    try:
        if _script is None:
            _script = _client().register_script(_RESERVE_LUA)
        result = int(_script(keys=keys, args=[count, limit, bucket_s * (BUCKETS + 1)], client=_client()))
    except (RedisError, OSError):
        logger.warning("event quota unavailable; append allowed")
        return NO_RESERVATION
    if result < 0:
        # The -result oldest buckets must leave the window: the oldest leaves when the
        # current bucket ends, each next one a bucket later.
        drop = -result
        wait = (current + drop) * bucket_s - now if drop <= BUCKETS else window
        raise EventQuotaExceeded(retry_after=wait, limit=limit, window_s=window)
    return Reservation(key=keys[-1], count=count)
