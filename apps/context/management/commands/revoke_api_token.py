"""``python manage.py revoke_api_token USERNAME``: end the user's API token now.

REST calls with it answer 401 at once on every web instance (the cache entry is
invalidated) and its open WebSockets are closed (4401).
"""

from __future__ import annotations

from typing import Any

from apps.common.services import api_token_revoke
from apps.context.management.commands._user_command import UserCommand


class Command(UserCommand):
    help = "Revoke USERNAME's API token (REST answers 401, open WebSockets close 4401)."

    def handle_user(self, user: Any, *, username: str) -> None:
        revoked = api_token_revoke(user=user)
        self.stdout.write(f"Revoked the token of {username!r}." if revoked else f"{username!r} had no token.")
