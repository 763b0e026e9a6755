"""``python manage.py replay_event_dead_letters NAME [--limit N] [--force]``: dead letters back to a subscriber."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.common.exceptions import ApplicationError
from apps.ops.deadletters.archiver import subscriber_dead_letters_replay


class Command(BaseCommand):
    help = (
        "Send a subscriber's dead letters back into its queue (events.NAME), once the cause is fixed. "
        "What waits in events.NAME.dlq is archived first, so every replay is audited (DeadLetterReplay)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="The subscriber, e.g. activity.")
        parser.add_argument("--limit", type=int, default=1000, help="At most this many messages (and rows).")
        parser.add_argument("--force", action="store_true", help="Replay archived rows replayed before as well.")

    def handle(self, *args: Any, **options: Any) -> None:
        name, limit = options["name"], options["limit"]
        if limit < 1:
            raise CommandError("--limit must be at least 1.")
        try:
            result = subscriber_dead_letters_replay(subscriber=name, limit=limit, force=options["force"])
        except ApplicationError as exc:
            raise CommandError(f"{exc.message} {exc.details}") from exc
        self.stdout.write(
            f"archived {result['archived']} dead letter(s) from events.{name}.dlq; replayed "
            f"{len(result['replayed'])} into events.{name} ({len(result['skipped'])} skipped, "
            f"{len(result['failed'])} failed{', more left' if result['truncated'] else ''})"
        )
