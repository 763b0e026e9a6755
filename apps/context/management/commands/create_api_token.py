"""``python manage.py create_api_token USERNAME [--staff]``.

Creates the user if missing (with an unusable password: it logs in with the
token only) and prints its API token alone on the last line, so scripts can
take it with ``| tail -n1``. Running it again prints the same token.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from apps.common.services import api_token_get_or_create


class Command(BaseCommand):
    help = "Create USERNAME if missing and print its API token (the token alone on the last line)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--staff", action="store_true", help="Make the user staff and superuser (admin, ops API).")

    def handle(self, *args: Any, username: str, staff: bool, **options: Any) -> None:
        user_model = get_user_model()
        field = user_model._meta.get_field(user_model.USERNAME_FIELD)
        try:
            username = field.clean(username, None)
        except Exception as exc:  # ValidationError: say which rule failed
            raise CommandError(
                f"Invalid username {username!r}: {' '.join(getattr(exc, 'messages', [str(exc)]))}"
            ) from exc
        with transaction.atomic():
            user, created = user_model.objects.get_or_create(**{user_model.USERNAME_FIELD: username})
            if created:
                user.set_unusable_password()
            if staff:
                user.is_staff = True
                user.is_superuser = True
            if created or staff:
                user.save()
            token_key = api_token_get_or_create(user=user)
        self.stdout.write(
            f"{'Created' if created else 'Found'} user {username!r}{' (staff)' if user.is_staff else ''}."
        )
        self.stdout.write(token_key)
