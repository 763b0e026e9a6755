"""``python manage.py replay_event_dead_letters NAME [--limit N]``: dead letters back to a subscriber."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.common.exceptions import ApplicationError
from apps.eventbus.deadletters import event_dead_letters_replay


class Command(BaseCommand):
    help = "Move a subscriber's dead letters (events.NAME.dlq) back into its queue, once the cause is fixed."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="The subscriber, e.g. activity.")
        parser.add_argument("--limit", type=int, default=None, help="At most this many messages.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            moved = event_dead_letters_replay(subscriber=options["name"], limit=options["limit"])
        except ApplicationError as exc:
            raise CommandError(f"{exc.message} {exc.details}") from exc
        self.stdout.write(f"replayed {moved} dead letter(s) into events.{options['name']}")
