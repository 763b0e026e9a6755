"""``python manage.py replay_event_dead_letters NAME [--limit N] [--force]``: dead letters back to a subscriber."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.common.exceptions import ApplicationError
from apps.eventbus.deadletters import event_archived_dead_letters_replay, event_dead_letters_replay


class Command(BaseCommand):
    help = (
        "Send a subscriber's dead letters back into its queue (events.NAME), once the cause is fixed: "
        "those still in events.NAME.dlq and those the dead-letter archiver stored as DeadLetter rows."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="The subscriber, e.g. activity.")
        parser.add_argument("--limit", type=int, default=None, help="At most this many messages (and rows).")
        parser.add_argument("--force", action="store_true", help="Replay archived rows replayed before as well.")

    def handle(self, *args: Any, **options: Any) -> None:
        name, limit = options["name"], options["limit"]
        try:
            moved = event_dead_letters_replay(subscriber=name, limit=limit)
            archived = event_archived_dead_letters_replay(subscriber=name, limit=limit or 1000, force=options["force"])
        except ApplicationError as exc:
            raise CommandError(f"{exc.message} {exc.details}") from exc
        self.stdout.write(
            f"replayed {moved} dead letter(s) from events.{name}.dlq and {len(archived['replayed'])} archived "
            f"row(s) into events.{name} ({len(archived['skipped'])} skipped, {len(archived['failed'])} failed"
            f"{', more left' if archived['truncated'] else ''})"
        )
