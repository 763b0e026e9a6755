"""``python manage.py rotate_api_token USERNAME``: a new API token; the old one stops working at once.

Prints the new token alone on the last line (``| tail -n1``). Open WebSockets
that used the old token are closed (4401).
"""

from __future__ import annotations

from typing import Any

from apps.common.services import api_token_expires_at, api_token_rotate
from apps.context.management.commands._user_command import UserCommand


class Command(UserCommand):
    help = "Replace USERNAME's API token with a new one (the old one is revoked); prints the new token last."

    def handle_user(self, user: Any, *, username: str) -> None:
        token = api_token_rotate(user=user)
        expires_at = api_token_expires_at(token)
        self.stdout.write(f"Rotated the token of {username!r}; expires {expires_at or 'never'}.")
        self.stdout.write(token.key)
