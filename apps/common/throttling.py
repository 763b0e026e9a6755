"""Rate limits: per user, per client IP, and a tight one on password login.

Fixed-window counters in Redis (``SET NX EX`` + ``INCRBY``, pipelined),
reached through Django's default cache connection and its key prefix, so a
limit holds across every web instance; each process reports its counts in
small batches (see ``RedisThrottle``). DRF's own
``SimpleRateThrottle`` stores a list of every request timestamp in the window
and rewrites it on each request: at 6000/min that is a 6000-entry pickle per
call, which costs more than the request it guards. A fixed window may let up
to twice the rate through across a window boundary; that is the accepted
price of O(1) work.

Rates are read from ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` on each
request (DRF freezes them at import), so ``override_settings`` works in tests.
A scope without a rate is not limited. If Redis is down the request goes
through: a rate limiter must not turn a cache outage into an API outage.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """``"100/min"`` -> ``(100, 60)``; the period is read by its first letter, as in DRF."""
    num, period = rate.split("/")
    return int(num), _PERIODS[period.strip()[0]]


def _client(backend: Any) -> Any:
    """One redis-py client per cache backend (Django builds a new one per call: ~0.7 ms)."""
    client = backend.__dict__.get("_throttle_client")
    if client is None:
        client = backend._throttle_client = backend.get_client(write=True)
    return client


def _client_ip(throttle: BaseThrottle, request: Request) -> str | None:
    # REMOTE_ADDR unless NUM_PROXIES names trusted proxies (HAProxy) that append
    # to X-Forwarded-For; a client-supplied header is never trusted on its own.
    return throttle.get_ident(request)


def user_ident(request: Request) -> str | None:
    user = getattr(request, "user", None)
    return str(user.pk) if user is not None and user.is_authenticated else None


@dataclass
class _Window:
    shared: int = 0  # the Redis count at the last sync (all instances, ours included)
    pending: int = 0  # requests this process admitted since then
    synced_at: float = 0.0


# (scope, ident, window index) -> local view of that counter; one per process.
_windows: dict[tuple[str, str, int], _Window] = {}
_windows_lock = threading.Lock()
# A process reports to Redis at least this often, and after 1% of the limit.
SYNC_INTERVAL_S = 1.0
_MAX_WINDOWS = 50_000


def reset_local_counts() -> None:
    """Forget this process's unreported counts (tests that change rates call it)."""
    with _windows_lock:
        _windows.clear()


def _prune(now: float) -> None:
    stale = [key for key, w in _windows.items() if now - w.synced_at > 2 * SYNC_INTERVAL_S and not w.pending]
    for key in stale[: len(_windows) - _MAX_WINDOWS // 2] if len(_windows) > _MAX_WINDOWS else stale:
        del _windows[key]


class RedisThrottle(BaseThrottle):
    """Fixed-window counters shared through Redis, reported in batches.

    Each process counts locally and adds its count to Redis (``INCRBY``, one
    pipelined round trip for every counter due) once it has admitted 1% of
    the limit or ``SYNC_INTERVAL_S`` has passed, and always before it refuses
    a request. With small limits that is every request (exact); with large
    ones most requests cost no Redis round trip, and N instances may overshoot
    by at most N x 1% of the limit plus one interval's traffic.
    """

    def __init__(self) -> None:
        self._wait: float | None = None

    def limits(self, request: Request) -> list[tuple[str, str]]:
        raise NotImplementedError

    def allow_request(self, request: Request, view: Any) -> bool:
        self._wait = throttle_check(self.limits(request))
        return self._wait is None

    def wait(self) -> float | None:
        return self._wait


def throttle_check(limits: list[tuple[str, str]]) -> float | None:
    """Count one request against each ``(scope, ident)``; None if allowed, else seconds to wait.

    The counters of ``RedisThrottle``, for callers without a DRF request: the
    WebSocket consumer counts each frame that does work against the same
    ``user`` budget as the user's REST calls (``ws_frame_throttle_check``).
    """
    rates = api_settings.DEFAULT_THROTTLE_RATES
    checks = [(scope, ident, *parse_rate(rates[scope])) for scope, ident in limits if rates.get(scope)]
    if not checks:
        return None
    now = time.time()
    due: list[tuple[tuple[str, str, int], int, int, int]] = []  # (key, increment, limit, period)
    refused_waits: list[float] = []
    with _windows_lock:
        if len(_windows) > _MAX_WINDOWS:
            _prune(now)
        for scope, ident, limit, period in checks:
            key = (scope, ident, int(now // period))
            window = _windows.get(key)
            if window is None:
                window = _windows[key] = _Window()
            window.pending += 1
            estimate = window.shared + window.pending
            if estimate > limit or window.pending >= max(1, limit // 100) or now - window.synced_at >= SYNC_INTERVAL_S:
                due.append((key, window.pending, limit, period))
                window.pending = 0
                window.synced_at = now
    if not due:
        return None
    try:
        pipe = _client(cache._cache).pipeline(transaction=False)
        for (scope, ident, index), increment, _limit, period in due:
            redis_key = cache.make_key(f"throttle:{scope}:{ident}:{index}")
            pipe.set(redis_key, 0, ex=period + 1, nx=True)
            pipe.incrby(redis_key, increment)
        totals = pipe.execute()[1::2]
    except (RedisError, OSError):
        logger.warning("throttle cache unavailable; request allowed")
        return None
    with _windows_lock:
        for (key, _increment, limit, period), total in zip(due, totals, strict=True):
            window = _windows.get(key)
            if window is not None:
                window.shared = max(window.shared, total)
            if total > limit:
                refused_waits.append((key[2] + 1) * period - now)
    if not refused_waits:
        return None
    return max(refused_waits)


def ws_frame_throttle_check(*, user_id: Any, ip: str | None) -> float | None:
    """A WebSocket frame that does work, counted as one request of ``DefaultThrottle``'s
    budgets (per user, per IP): a user's frames on all their sockets and their REST
    calls share one limit. None if allowed, else seconds to wait."""
    return throttle_check([("user", str(user_id)), ("ip", ip or "unknown")])


class DefaultThrottle(RedisThrottle):
    """The default for every view: per user (or per IP when anonymous) and per IP
    for everyone, so many tokens from one address share one budget."""

    def limits(self, request: Request) -> list[tuple[str, str]]:
        ip = _client_ip(self, request) or "unknown"
        user_id = user_ident(request)
        return [("user", user_id) if user_id else ("anon", ip), ("ip", ip)]


class UserThrottle(RedisThrottle):
    """Per authenticated user only."""

    def limits(self, request: Request) -> list[tuple[str, str]]:
        user_id = user_ident(request)
        return [("user", user_id)] if user_id else []


class AnonThrottle(RedisThrottle):
    """Per client IP, anonymous requests only."""

    def limits(self, request: Request) -> list[tuple[str, str]]:
        return [] if user_ident(request) else [("anon", _client_ip(self, request) or "unknown")]


class IPThrottle(RedisThrottle):
    """Per client IP, everyone."""

    def limits(self, request: Request) -> list[tuple[str, str]]:
        return [("ip", _client_ip(self, request) or "unknown")]


class LoginThrottle(RedisThrottle):
    """Password guesses per client IP on the token endpoint."""

    def limits(self, request: Request) -> list[tuple[str, str]]:
        return [("login", _client_ip(self, request) or "unknown")]


# Earlier names, still imported elsewhere (apps/ops/deadletters/api.py).
_RedisThrottle = RedisThrottle
_user_id = user_ident
