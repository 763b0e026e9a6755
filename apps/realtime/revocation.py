"""Revocation that reaches open sockets: why a socket must close, and the checks that find out.

Two ways, so that neither a lost push nor a stale cache keeps a socket open:

- **Push.** Every socket joins its user's channel-layer group
  (``broadcast.user_group_name``). Removing a participant (the service, so
  REST and admin alike), deactivating or deleting a user and deleting a token
  send ``access.revoked`` to that group after commit; the consumer closes at
  once (measured in tests/security/test_revocation.py).
- **Re-check.** Each socket re-reads its token and membership through the
  cache (``apps/caching``: invalidated by the same writes in every process)
  before a write or a ``resume``, at most every ``WS_ACCESS_RECHECK_S`` for
  the other frames it serves, and on every heartbeat: a push lost with a
  Redis blip is caught within ``PRESENCE_HEARTBEAT_S``. An expired token is
  found the same way, and by a timer set at its expiry.

Reasons and the close code each gets: ``removed``, ``session_deleted`` -> 4404
(as for an outsider); ``token_revoked``, ``token_expired``, ``user_inactive``,
``user_deleted`` -> 4401.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from apps.caching.auth import auth_token_get, token_digest, token_expired
from apps.context import selectors as context_selectors
from apps.realtime.broadcast import access_revoke

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404

CLOSE_CODES = {
    "removed": CLOSE_NOT_FOUND,
    "session_deleted": CLOSE_NOT_FOUND,
    "token_revoked": CLOSE_UNAUTHENTICATED,
    "token_expired": CLOSE_UNAUTHENTICATED,
    "user_inactive": CLOSE_UNAUTHENTICATED,
    "user_deleted": CLOSE_UNAUTHENTICATED,
}


def access_problem(*, token_key: str, user_id: Any, session_id: Any) -> str | None:
    """Why this socket may no longer serve its session (a reason above), or None. Cached reads."""
    found = auth_token_get(key=token_key)
    if found is None:
        return "token_revoked"
    user, token = found
    if user.pk != user_id:
        return "token_revoked"
    if not user.is_active:
        return "user_inactive"
    if token_expired(token):
        return "token_expired"
    if context_selectors.participant_get(session_id=session_id, user=user) is None:
        return "removed"
    return None


# -- signal receivers (connected in RealtimeConfig.ready) --------------------------


def on_user_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if not created and not instance.is_active:
        user_id = instance.pk
        transaction.on_commit(lambda: access_revoke(user_id=user_id, reason="user_inactive"))


def on_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    user_id = instance.pk
    transaction.on_commit(lambda: access_revoke(user_id=user_id, reason="user_deleted"))


def on_token_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    user_id, digest = instance.user_id, token_digest(instance.key)
    transaction.on_commit(lambda: access_revoke(user_id=user_id, reason="token_revoked", token_digest=digest))
