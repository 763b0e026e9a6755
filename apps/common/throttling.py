"""Rate limits: per user, per client IP, and a tight one on password login.

A fixed-window counter in Redis (``SET NX EX`` + ``INCR`` in one pipelined
round trip), reached through Django's default cache connection and its key
prefix, so a limit holds across every web instance. DRF's own
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
import time
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


def _user_id(request: Request) -> str | None:
    user = getattr(request, "user", None)
    return str(user.pk) if user is not None and user.is_authenticated else None


class _RedisThrottle(BaseThrottle):
    """Checks every (scope, ident) it names in one pipelined Redis round trip."""

    def __init__(self) -> None:
        self._wait: float | None = None

    def limits(self, request: Request) -> list[tuple[str, str]]:
        raise NotImplementedError

    def allow_request(self, request: Request, view: Any) -> bool:
        rates = api_settings.DEFAULT_THROTTLE_RATES
        checks = [
            (scope, ident, *parse_rate(rates[scope])) for scope, ident in self.limits(request) if rates.get(scope)
        ]
        if not checks:
            return True
        now = time.time()
        keys = []
        try:
            pipe = _client(cache._cache).pipeline(transaction=False)
            for scope, ident, _limit, period in checks:
                key = cache.make_key(f"throttle:{scope}:{ident}:{int(now // period)}")
                keys.append(key)
                pipe.set(key, 0, ex=period + 1, nx=True)
                pipe.incr(key)
            counts = pipe.execute()[1::2]
        except (RedisError, OSError):
            logger.warning("throttle cache unavailable; request allowed")
            return True
        waits = [
            (int(now // period) + 1) * period - now
            for (_scope, _ident, limit, period), count in zip(checks, counts, strict=True)
            if count > limit
        ]
        if not waits:
            return True
        self._wait = max(waits)
        return False

    def wait(self) -> float | None:
        return self._wait


class DefaultThrottle(_RedisThrottle):
    """The default for every view: per user (or per IP when anonymous) and per IP
    for everyone, so many tokens from one address share one budget."""

    def limits(self, request: Request) -> list[tuple[str, str]]:
        ip = _client_ip(self, request) or "unknown"
        user_id = _user_id(request)
        return [("user", user_id) if user_id else ("anon", ip), ("ip", ip)]


class UserThrottle(_RedisThrottle):
    """Per authenticated user only."""

    def limits(self, request: Request) -> list[tuple[str, str]]:
        user_id = _user_id(request)
        return [("user", user_id)] if user_id else []


class AnonThrottle(_RedisThrottle):
    """Per client IP, anonymous requests only."""

    def limits(self, request: Request) -> list[tuple[str, str]]:
        return [] if _user_id(request) else [("anon", _client_ip(self, request) or "unknown")]


class IPThrottle(_RedisThrottle):
    """Per client IP, everyone."""

    def limits(self, request: Request) -> list[tuple[str, str]]:
        return [("ip", _client_ip(self, request) or "unknown")]


class LoginThrottle(_RedisThrottle):
    """Password guesses per client IP on the token endpoint."""

    def limits(self, request: Request) -> list[tuple[str, str]]:
        return [("login", _client_ip(self, request) or "unknown")]
