"""Writes shared by every app: API tokens and their lifecycle.

A token is issued by ``api_token_get_or_create`` (the login endpoint,
``manage.py create_api_token``), expires ``API_TOKEN_TTL_S`` after it was
issued, is replaced by ``api_token_rotate`` (a new key; the old one stops
working at once) and ended by ``api_token_revoke``. Deleting the row is what
revokes: the cache invalidation (apps/caching/auth.py) and the push that closes
the token's open WebSockets (apps/realtime/revocation.py) hang on its delete.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token


def api_token_expires_at(token: Token) -> datetime | None:
    """When ``token`` stops working (None: tokens never expire, ``API_TOKEN_TTL_S=0``)."""
    ttl = settings.API_TOKEN_TTL_S
    return token.created + timedelta(seconds=ttl) if ttl > 0 else None


def api_token_expired(token: Token) -> bool:
    expires_at = api_token_expires_at(token)
    return expires_at is not None and expires_at <= timezone.now()


def api_token_get_or_create(*, user: AbstractBaseUser) -> str:
    """The user's API token key; created on first use, the same key afterwards until it expires."""
    return api_token_issue(user=user).key


def api_token_issue(*, user: AbstractBaseUser) -> Token:
    """The user's current token, or a new one when there is none or it has expired."""
    with transaction.atomic():
        token = Token.objects.select_for_update().filter(user_id=user.pk).first()
        if token is not None and api_token_expired(token):
            token.delete()
            token = None
        return token if token is not None else Token.objects.create(user_id=user.pk)


def api_token_rotate(*, user: AbstractBaseUser) -> Token:
    """A new key for ``user``; the old one is revoked in the same transaction."""
    with transaction.atomic():
        for old in Token.objects.select_for_update().filter(user_id=user.pk):
            old.delete()  # one by one: each delete signals its revocation
        return Token.objects.create(user_id=user.pk)


def api_token_revoke(*, user: AbstractBaseUser) -> bool:
    """End the user's token; False if there was none."""
    with transaction.atomic():
        tokens = list(Token.objects.select_for_update().filter(user_id=user.pk))
        for token in tokens:
            token.delete()
    return bool(tokens)
