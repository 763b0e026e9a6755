"""Token authentication through the multi-level cache.

DRF's ``TokenAuthentication`` costs one query on every request, which after the
session and participant lookups are cached is most of what a read costs. This
class answers the same from the cache: the key is a SHA-256 of the token (the
token itself never appears in a Redis key name), the value is the ``(user,
token)`` pair with the password hash deferred (it never reaches Redis), and an
unknown token is cached as "not found" for a few seconds.

Revocation reaches every process like any other invalidation: deleting a token
or saving a user (deactivation, password change) invalidates the entries.
DRF's ``Token`` and Django's ``User`` have no services of ours to hook, and the
admin and ``manage.py`` write them directly, so the receivers are connected in
``CachingConfig.ready`` to their ``post_save``/``post_delete`` signals; they do
nothing but invalidate. A bulk ``QuerySet.update()`` sends no signal: such a
change is seen within ``AUTH_CACHE_TTL``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.contrib.auth import get_user_model
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from apps.caching.keys import cache_key, model_fingerprint
from apps.caching.selectors import get_or_load
from apps.caching.services import cache_invalidate_keys
from apps.common.services import api_token_expired

AUTH_CACHE_TTL = 30.0
_MAX_KEY_LENGTH = 64  # DRF keys are 40 characters; longer is never worth a lookup


def token_digest(key: str) -> str:
    """A token's SHA-256: how it is named anywhere but its own row (cache keys, revocation pushes)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def token_expired(token: Token) -> bool:
    """Past ``API_TOKEN_TTL_S`` since it was issued (or rotated); 0 means tokens never expire."""
    return api_token_expired(token)


def token_cache_key(key: str) -> str:
    digest = token_digest(key)
    version = model_fingerprint(Token) + model_fingerprint(get_user_model())
    return cache_key("auth.token", digest, version=version)


def _load(key: str) -> tuple[Any, Token] | None:
    token = Token.objects.select_related("user").defer("user__password").filter(key=key).first()
    return None if token is None else (token.user, token)


def auth_token_get(*, key: str) -> tuple[Any, Token] | None:
    """``(user, token)`` for a token key, or None; active or not is the caller's check."""
    if not key or len(key) > _MAX_KEY_LENGTH or "\x00" in key:
        return None
    return get_or_load(token_cache_key(key), lambda: _load(key), ttl=AUTH_CACHE_TTL, negative_ttl=5.0)


class CachedTokenAuthentication(TokenAuthentication):
    """Drop-in for ``rest_framework.authentication.TokenAuthentication``."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        found = auth_token_get(key=key)
        if found is None:
            raise AuthenticationFailed("Invalid token.")
        user, token = found
        if not user.is_active:
            raise AuthenticationFailed("User inactive or deleted.")
        if token_expired(token):
            # The cached pair carries ``created``: expiry needs no invalidation.
            raise AuthenticationFailed("Token expired.")
        return user, token


# -- signal receivers (connected in CachingConfig.ready) --------------------------


def on_token_changed(sender: Any, instance: Token, **kwargs: Any) -> None:
    cache_invalidate_keys(keys=[token_cache_key(instance.key)])


def on_user_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    if instance.pk is None:
        return
    keys = list(Token.objects.filter(user_id=instance.pk).values_list("key", flat=True))
    if keys:
        cache_invalidate_keys(keys=[token_cache_key(k) for k in keys])
