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


class _RedisThrottle(BaseThrottle):
    scope: str = ""

    def __init__(self) -> None:
        self._wait: float | None = None

    def get_ident_for(self, request: Request) -> str | None:
        raise NotImplementedError

    def allow_request(self, request: Request, view: Any) -> bool:
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
        ident = self.get_ident_for(request) if rate else None
        if ident is None:
            return True
        limit, period = parse_rate(rate)
        now = time.time()
        window = int(now // period)
        key = cache.make_key(f"throttle:{self.scope}:{ident}:{window}")
        try:
            client = cache._cache.get_client(key, write=True)
            pipe = client.pipeline(transaction=False)
            pipe.set(key, 0, ex=period + 1, nx=True)
            pipe.incr(key)
            _, count = pipe.execute()
        except (RedisError, OSError):
            logger.warning("throttle cache unavailable; request allowed", extra={"scope": self.scope})
            return True
        if count <= limit:
            return True
        self._wait = (window + 1) * period - now
        return False

    def wait(self) -> float | None:
        return self._wait


class UserThrottle(_RedisThrottle):
    """Per authenticated user; anonymous requests are left to ``AnonThrottle``."""

    scope = "user"

    def get_ident_for(self, request: Request) -> str | None:
        user = getattr(request, "user", None)
        return str(user.pk) if user is not None and user.is_authenticated else None


class AnonThrottle(_RedisThrottle):
    """Per client IP, anonymous requests only."""

    scope = "anon"

    def get_ident_for(self, request: Request) -> str | None:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return None
        return self.get_ident(request)


class IPThrottle(_RedisThrottle):
    """Per client IP, everyone: many tokens from one address share one budget.

    The address is ``REMOTE_ADDR`` unless ``NUM_PROXIES`` says how many trusted
    proxies (HAProxy) append to ``X-Forwarded-For``; a client-supplied header is
    never trusted on its own.
    """

    scope = "ip"

    def get_ident_for(self, request: Request) -> str | None:
        return self.get_ident(request)


class LoginThrottle(IPThrottle):
    """Password guesses per client IP on the token endpoint."""

    scope = "login"
