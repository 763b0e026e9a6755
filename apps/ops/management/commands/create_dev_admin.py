"""Create the local operator account ``make up`` prints (DEBUG only)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from project import env


class Command(BaseCommand):
    help = "Create (or keep) a superuser for local use and print how to log in. Refuses when DEBUG is off."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("create_dev_admin only runs with DEBUG on; use createsuperuser in production.")
        username = env.get_str("DEV_ADMIN_USERNAME", "admin")
        password = env.get_str("DEV_ADMIN_PASSWORD", "admin")
        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first()
        if user is None:
            user = user_model.objects.create_superuser(username=username, password=password, email="")
            self.stdout.write(f"    admin login  {username} / {password}  (set DEV_ADMIN_PASSWORD in .env to change)")
        else:
            self.stdout.write(f"    admin login  {username} (existing account)")
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(f"    API token    {token.key}  (Authorization: Token <key>)")
