"""``python manage.py create_api_token USERNAME [--staff]``.

Creates the user if missing (with an unusable password: it logs in with the
token only) and prints its API token alone on the last line, so scripts can
take it with ``| tail -n1``. Running it again prints the same token.

``--staff`` makes the user staff and a member of the operators group
(``settings.OPS_OPERATORS_GROUP``, created by migration ``ops.0003``), which
holds every permission the ops endpoints check; it does not make a superuser.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from apps.common.services import api_token_get_or_create


class Command(BaseCommand):
    help = "Create USERNAME if missing and print its API token (the token alone on the last line)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--staff", action="store_true", help="Make the user staff and an operator (admin, every ops endpoint)."
        )

    def handle(self, *args: Any, username: str, staff: bool, **options: Any) -> None:
        user_model = get_user_model()
        field = user_model._meta.get_field(user_model.USERNAME_FIELD)
        try:
            username = field.clean(username, None)
        except Exception as exc:  # ValidationError: say which rule failed
            raise CommandError(
                f"Invalid username {username!r}: {' '.join(getattr(exc, 'messages', [str(exc)]))}"
            ) from exc
        operators = None
        if staff:
            operators = Group.objects.filter(name=settings.OPS_OPERATORS_GROUP).first()
            if operators is None:
                raise CommandError(f"The {settings.OPS_OPERATORS_GROUP!r} group is missing: run `manage.py migrate`.")
        with transaction.atomic():
            user, created = user_model.objects.get_or_create(**{user_model.USERNAME_FIELD: username})
            if created:
                user.set_unusable_password()
            if staff:
                user.is_staff = True
            if created or staff:
                user.save()
            if operators is not None:
                user.groups.add(operators)
            token_key = api_token_get_or_create(user=user)
        self.stdout.write(
            f"{'Created' if created else 'Found'} user {username!r}{' (staff)' if user.is_staff else ''}."
        )
        self.stdout.write(token_key)
