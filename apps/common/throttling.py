"""Rate limits: per user, per client IP, and a tight one on password login.

Counters live in Django's default cache, which is Redis, so a limit holds
across every web instance. Rates are read from ``REST_FRAMEWORK`` on each
request (DRF freezes them at import time), so ``override_settings`` works in
tests. If Redis is down the request goes through: a rate limiter must not turn
a cache outage into an API outage.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

logger = logging.getLogger(__name__)


class _RedisThrottle(SimpleRateThrottle):
    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except (RedisError, OSError):
            logger.warning("throttle cache unavailable; request allowed", extra={"scope": self.scope})
            return True


class UserThrottle(_RedisThrottle):
    """Per authenticated user; anonymous requests are left to ``IPThrottle``."""

    scope = "user"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if not (request.user and request.user.is_authenticated):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


class AnonThrottle(_RedisThrottle):
    """Per client IP, anonymous requests only."""

    scope = "anon"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if request.user and request.user.is_authenticated:
            return None
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class IPThrottle(_RedisThrottle):
    """Per client IP, everyone: many tokens from one address share one budget.

    The address is ``REMOTE_ADDR`` unless ``NUM_PROXIES`` says how many trusted
    proxies (HAProxy) append to ``X-Forwarded-For``; a client-supplied header is
    never trusted on its own.
    """

    scope = "ip"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class LoginThrottle(IPThrottle):
    """Password guesses per client IP on the token endpoint."""

    scope = "login"
