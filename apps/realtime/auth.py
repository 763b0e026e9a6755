"""WebSocket handshake helpers: token authentication and the Origin check.

Browsers cannot set an ``Authorization`` header on a WebSocket, so the token
comes either in the ``token`` query parameter or as a subprotocol
``token.<key>`` in ``Sec-WebSocket-Protocol`` (offered beside
``context-engine``, which the server then selects; a browser fails a handshake
whose answer names none of its offers). Query parameters end up in access
logs; the subprotocol form keeps the token out of them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from apps.caching.auth import auth_token_get, token_expired
from apps.common.services import api_token_expires_at

SUBPROTOCOL = "context-engine"
TOKEN_SUBPROTOCOL_PREFIX = "token."  # noqa: S105 - a subprotocol prefix, not a password


def token_from_scope(scope: dict[str, Any]) -> str | None:
    """The handshake's token: ``Authorization: Token <key>`` (scripts, services), else the
    ``token.<key>`` subprotocol (browsers), else the ``token`` query parameter (kept for old
    clients; redacted from every log line by ``apps.common.logging.SecretRedactionFilter``)."""
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            if scheme.lower() == "token" and key.strip():
                return key.strip()
    for offered in scope.get("subprotocols") or []:
        if offered.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return offered[len(TOKEN_SUBPROTOCOL_PREFIX) :] or None
    query = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
    values = query.get("token")
    return values[0] if values and values[0] else None


def selected_subprotocol(scope: dict[str, Any]) -> str | None:
    return SUBPROTOCOL if SUBPROTOCOL in (scope.get("subprotocols") or []) else None


def origin_allowed(scope: dict[str, Any]) -> bool:
    """A browser's Origin must be listed in ALLOWED_ORIGINS ("*" allows any).

    No Origin header means a non-browser client (a script, a service): it holds
    its own token and cannot be a cross-site page riding a user's login.
    """
    origin = None
    for name, value in scope.get("headers") or []:
        if name == b"origin":
            origin = value.decode("latin-1")
            break
    if origin is None:
        return True
    allowed = settings.ALLOWED_ORIGINS
    return "*" in allowed or origin in allowed


@database_sync_to_async
def _user_for_token(key: str) -> Any:
    # The same cached lookup and checks as REST (apps/caching/auth.py): revoked,
    # expired and inactive are refused alike.
    found = auth_token_get(key=key)
    if found is None or not found[0].is_active or token_expired(found[1]):
        return AnonymousUser(), None
    return found[0], api_token_expires_at(found[1])


class TokenAuthMiddleware(BaseMiddleware):
    """Puts ``scope["user"]`` (AnonymousUser without a valid token) and ``scope["token_key"]``; the consumer refuses.

    The consumer keeps the key to re-check it while the socket is open (apps/realtime/revocation.py).
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        scope = dict(scope)
        key = token_from_scope(scope)
        scope["user"], scope["token_expires_at"] = await _user_for_token(key) if key else (AnonymousUser(), None)
        scope["token_key"] = key if scope["user"].is_authenticated else None
        return await super().__call__(scope, receive, send)
