"""``python manage.py rotate_api_token USERNAME``: a new API token; the old one stops working at once.

Prints the new token alone on the last line (``| tail -n1``). Open WebSockets
that used the old token are closed (4401).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.common.services import api_token_expires_at, api_token_rotate


class Command(BaseCommand):
    help = "Replace USERNAME's API token with a new one (the old one is revoked); prints the new token last."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        user_model = get_user_model()
        user = user_model.objects.filter(**{user_model.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        token = api_token_rotate(user=user)
        expires_at = api_token_expires_at(token)
        self.stdout.write(f"Rotated the token of {username!r}; expires {expires_at or 'never'}.")
        self.stdout.write(token.key)
