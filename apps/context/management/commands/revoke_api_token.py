"""``python manage.py revoke_api_token USERNAME``: end the user's API token now.

REST calls with it answer 401 at once on every web instance (the cache entry is
invalidated) and its open WebSockets are closed (4401).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.common.services import api_token_revoke


class Command(BaseCommand):
    help = "Revoke USERNAME's API token (REST answers 401, open WebSockets close 4401)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        user_model = get_user_model()
        user = user_model.objects.filter(**{user_model.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        revoked = api_token_revoke(user=user)
        self.stdout.write(f"Revoked the token of {username!r}." if revoked else f"{username!r} had no token.")
