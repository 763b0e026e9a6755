"""Lockout after repeated failed authentications: 429 with ``Retry-After``.

Two kinds of failure are counted, each per client IP, in fixed windows of
``AUTH_FAILURE_WINDOW_SECONDS`` shared through Redis (Django's cache, so every
web instance sees them), with separate budgets so that password guessing from
an address does not lock its valid tokens out:

* **password logins** (the admin login form and ``POST /api/v1/auth/token/``),
  from Django's ``user_login_failed`` signal, also per username. Every password
  attempt is checked first (one Redis read; these are rare): once
  ``AUTH_FAILURES_PER_USERNAME`` wrong passwords were tried for a name, or
  ``AUTH_FAILURES_PER_IP`` from an address, further attempts are answered 429
  without looking at the password, alike whether the name exists or not;
* **rejected credentials** on any other request (an ``Authorization`` header
  answered 401: a bad, expired or revoked token, a wrong metrics bearer).
  A request with a valid token must not pay a Redis round trip, so the check
  before each request is local: a process that records a failure over the
  limit marks the address and refuses its credentials until the window ends
  (confirming with Redis, so the mark goes when the counter does). Across N
  processes (gunicorn workers, web instances) that lets at most one more
  credential per process through per window: each locks the address at its
  own first failure past the limit.

The client IP is DRF's (``REMOTE_ADDR`` unless ``NUM_PROXIES`` trusted proxies
append to ``X-Forwarded-For``), as for the rate limits. If Redis is down nothing
is locked: a lockout must not turn a cache outage into a login outage.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, JsonResponse
from redis.exceptions import RedisError
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

# Addresses this process found over the limit: ip -> monotonic deadline. Bounded.
_locked: dict[str, float] = {}
_locked_guard = threading.Lock()
_MAX_LOCAL = 10_000


def client_ip(request: Any) -> str:
    return BaseThrottle().get_ident(request) or "unknown"


def _window(now: float) -> tuple[int, float]:
    """The current window's index and the seconds until it ends."""
    period = settings.AUTH_FAILURE_WINDOW_SECONDS
    index = int(now // period)
    return index, (index + 1) * period - now


def _key(kind: str, ident: str, index: int) -> str:
    # Hashed: usernames are arbitrary text, and the key must not carry them in clear.
    digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"authfail:{kind}:{digest}:{index}"


def _login_limits(ip: str, username: str | None, index: int) -> list[tuple[str, int]]:
    keys = [(_key("login-ip", ip, index), settings.AUTH_FAILURES_PER_IP)]
    if username:
        keys.append((_key("login-user", username.casefold(), index), settings.AUTH_FAILURES_PER_USERNAME))
    return keys


def _count(limits: list[tuple[str, int]], remaining: float) -> bool | None:
    """Add one to each counter; True when one is at its limit, None when Redis did not answer."""
    try:
        over = False
        for key, limit in limits:
            cache.add(key, 0, timeout=math.ceil(remaining) + 1)
            over = cache.incr(key) >= limit or over
        return over
    except (RedisError, OSError, ValueError):
        logger.warning("lockout counters unavailable; failure not counted")
        return None


def login_failure_record(*, ip: str, username: str | None) -> None:
    """Count a wrong password from ``ip`` for ``username``."""
    index, remaining = _window(time.time())
    _count(_login_limits(ip, username, index), remaining)


def login_locked_for(*, ip: str, username: str | None) -> float | None:
    """Seconds until a password attempt from ``ip`` for ``username`` is allowed again (None: allowed)."""
    index, remaining = _window(time.time())
    limits = _login_limits(ip, username, index)
    try:
        counts = cache.get_many([key for key, _ in limits])
    except (RedisError, OSError):
        logger.warning("lockout counters unavailable; attempt allowed")
        return None
    return remaining if any(counts.get(key, 0) >= limit for key, limit in limits) else None


def credential_failure_record(*, ip: str) -> None:
    """Count a rejected credential from ``ip``; at the limit this process refuses the address until the window ends."""
    index, remaining = _window(time.time())
    if not _count([(_key("token-ip", ip, index), settings.AUTH_FAILURES_PER_IP)], remaining):
        return
    with _locked_guard:
        if len(_locked) >= _MAX_LOCAL:
            now = time.monotonic()
            for stale in [k for k, until in _locked.items() if until <= now]:
                del _locked[stale]
        if len(_locked) < _MAX_LOCAL:
            _locked[ip] = time.monotonic() + remaining


def credential_locked_for(*, ip: str) -> float | None:
    """Seconds credentials from ``ip`` are still refused; a Redis read only for an address this process locked."""
    with _locked_guard:
        until = _locked.get(ip)
    if until is None or until <= time.monotonic():
        return None
    index, remaining = _window(time.time())
    try:
        count = cache.get(_key("token-ip", ip, index), 0)
    except (RedisError, OSError):
        count = 0
    if count >= settings.AUTH_FAILURES_PER_IP:
        return remaining
    with _locked_guard:  # the window ended or the counters were cleared: unlocked
        _locked.pop(ip, None)
    return None


def reset_local_locks() -> None:
    """Forget this process's locks (tests)."""
    with _locked_guard:
        _locked.clear()


def on_user_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any
) -> None:
    """``user_login_failed`` receiver: a wrong password (admin, token login, any ``authenticate`` call)."""
    if request is None:  # manage.py, a test calling authenticate() directly: no client to lock
        return
    username = credentials.get("username")
    login_failure_record(ip=client_ip(request), username=str(username) if username else None)


def locked_response(wait: float) -> JsonResponse:
    seconds = max(1, math.ceil(wait))
    response = JsonResponse(
        {
            "code": "rate_limited",
            "message": "Too many failed authentications; try again later.",
            "details": {"retry_after_seconds": seconds},
        },
        status=429,
    )
    response["Retry-After"] = str(seconds)
    return response
