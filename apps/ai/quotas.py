"""Quotas on AI work: how many new questions a user, and a session, may ask per window.

The counters are the platform's fixed-window Redis throttles
(``apps.common.throttling.RedisThrottle``), asked from the service rather than
from a DRF view so they are counted only after the asker is known to take part
in the session (an outsider, who gets 404, spends nothing) and so any edge
(REST today) shares them. Scopes ``ai_query_user`` and ``ai_query_session``
for questions, ``ai_auto_user`` for the automatic requests context updates
create (REST and WebSocket appends, through the ``ai_trigger`` subscriber);
their rates sit in ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``
(``THROTTLE_AI_QUERY_USER_RATE``, ``THROTTLE_AI_QUERY_SESSION_RATE``,
``THROTTLE_AI_AUTO_USER_RATE``) beside every other limit. Like every throttle
they fail open when Redis is down.
"""

from __future__ import annotations

import math
from typing import Any

from apps.common.exceptions import ApplicationError
from apps.common.throttling import RedisThrottle


class AiQuotaExceeded(ApplicationError):
    """A user or a session asked for more AI work than its quota; ``retry_after`` is in seconds."""

    code = "rate_limited"

    def __init__(self, *, retry_after: float, scope: str) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            "Too many AI requests; try again later.",
            details={"retry_after_seconds": self.retry_after, "quota": scope},
            status_code=429,
        )


# The throttle reads only its own limits, never the request it is usually given.
_NO_REQUEST: Any = None


class _Quota(RedisThrottle):
    """The platform's fixed-window Redis counters for the given (scope, ident) pairs, outside a view."""

    def __init__(self, limits: list[tuple[str, str]]) -> None:
        super().__init__()
        self._limits = limits

    def limits(self, request: Any) -> list[tuple[str, str]]:
        return self._limits


def ai_query_quota_take(*, user_id: Any, session_id: Any) -> None:
    """Count one new query against its user's and its session's quota; ``AiQuotaExceeded`` when over.

    Called only after the user is known to take part in the session, so no
    outsider can spend a session's quota.
    """
    for scope, ident in (("ai_query_user", str(user_id)), ("ai_query_session", str(session_id))):
        quota = _Quota([(scope, ident)])
        if not quota.allow_request(_NO_REQUEST, None):
            raise AiQuotaExceeded(retry_after=quota.wait() or 1.0, scope=scope)


def ai_auto_quota_allows(*, user_id: Any) -> bool:
    """Count one new automatic request against its author's quota; False when over (the trigger is dropped).

    Only creations count: an update coalesced into a pending request costs
    nothing, so one busy session stays within it; many sessions flooded by
    one author do not.
    """
    return _Quota([("ai_auto_user", str(user_id))]).allow_request(_NO_REQUEST, None)
