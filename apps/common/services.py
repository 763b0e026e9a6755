"""Writes shared by every app: API tokens."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from rest_framework.authtoken.models import Token


def api_token_get_or_create(*, user: AbstractBaseUser) -> str:
    """The user's API token key; created on first use, the same key afterwards."""
    token, _ = Token.objects.get_or_create(user=user)
    return token.key
