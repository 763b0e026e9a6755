"""``python manage.py task_dead_letters list|replay|discard``: the dead-lettered tasks, from the shell.

The same services as the operator API and admin (``apps.ops.deadletters``):
every replay is audited (a ``DeadLetterReplay`` row), replays a row once
unless ``--force``, and a discard is recorded. Event dead letters have their
own command, ``replay_event_dead_letters NAME``.

    manage.py task_dead_letters list [--queue ai.realtime] [--task NAME] [--reason R] [--status new] [--limit 50]
    manage.py task_dead_letters replay ID [ID ...] [--force] [--user USERNAME]
    manage.py task_dead_letters replay --matching [--queue ...] [--task ...] [--limit 100] [--force]
    manage.py task_dead_letters discard ID [ID ...] [--user USERNAME]
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.common.exceptions import ApplicationError
from apps.eventbus.messages import is_event_queue
from apps.ops.deadletters import selectors, services
from apps.ops.models import ReplayStatus

FILTERS = ("queue", "task", "reason", "status")


def _add_filters(parser: CommandParser) -> None:
    parser.add_argument("--queue", help="Only this work queue (e.g. ai.realtime).")
    parser.add_argument("--task", help="Only this task name (e.g. ai.generate_suggestions).")
    parser.add_argument("--reason", help="Only this reason (rejected, retries_exhausted, delivery_limit, expired).")
    parser.add_argument("--status", help="Only this status (new, replayed, discarded).")


class Command(BaseCommand):
    help = "List, replay or discard dead-lettered tasks (audited, like the operator API)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        listing = actions.add_parser("list", help="The newest dead-lettered tasks, with their ids.")
        _add_filters(listing)
        listing.add_argument("--limit", type=int, default=50)
        replay = actions.add_parser("replay", help="Publish dead letters again, once each unless --force.")
        replay.add_argument("ids", nargs="*", help="Dead letter ids (from `list`).")
        replay.add_argument("--matching", action="store_true", help="Every dead letter the filters match.")
        _add_filters(replay)
        replay.add_argument("--limit", type=int, default=100, help="With --matching: at most this many.")
        replay.add_argument("--force", action="store_true", help="Replay rows replayed or discarded before.")
        replay.add_argument("--user", help="Record the replay as this user's.")
        discard = actions.add_parser("discard", help="Mark dead letters as dealt with (kept, not replayed).")
        discard.add_argument("ids", nargs="+")
        discard.add_argument("--user", help="Record the discard as this user's.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            {"list": self._list, "replay": self._replay, "discard": self._discard}[options["action"]](options)
        except ApplicationError as exc:
            raise CommandError(f"{exc.message} {exc.details or ''}".strip()) from exc

    # --- actions ---------------------------------------------------------------------
    def _list(self, options: dict[str, Any]) -> None:
        rows = list(self._queryset(options)[: self._limit(options)])
        if not rows:
            self.stdout.write("no dead-lettered tasks match")
            return
        for row in rows:
            self.stdout.write(
                f"{row.id}  {row.created_at:%Y-%m-%d %H:%M:%S}  {row.queue:<14} {row.task_name:<32} "
                f"{row.reason:<18} {row.status:<9} {row.exception_class}: {row.exception_message[:80]}"
            )
        self.stdout.write(f"{len(rows)} shown")

    def _replay(self, options: dict[str, Any]) -> None:
        user = self._user(options.get("user"))
        if options["matching"]:
            if options["ids"]:
                raise CommandError("Give ids or --matching, not both.")
            result = services.dead_letter_replay_bulk(
                queryset=self._queryset(options), user=user, force=options["force"], limit=self._limit(options)
            )
            self.stdout.write(
                f"replayed {len(result['replayed'])}, skipped {len(result['skipped'])}, failed {len(result['failed'])}"
                f"{' (more match: raise --limit)' if result['truncated'] else ''}"
            )
            if result["failed"]:
                raise CommandError(f"the broker refused {len(result['failed'])}: {', '.join(result['failed'])}")
            return
        if not options["ids"]:
            raise CommandError("Give the ids to replay (see `task_dead_letters list`), or --matching.")
        failed = 0
        for dead_letter_id in self._ids(options["ids"]):
            replay = services.dead_letter_replay(dead_letter_id=dead_letter_id, user=user, force=options["force"])
            self.stdout.write(f"{dead_letter_id}: {replay.status} as task {replay.new_task_id}")
            failed += replay.status == ReplayStatus.PUBLISH_FAILED
        if failed:
            raise CommandError(f"{failed} replay(s) could not be published (see the errors above)")

    def _discard(self, options: dict[str, Any]) -> None:
        user = self._user(options.get("user"))
        for dead_letter_id in self._ids(options["ids"]):
            row = services.dead_letter_discard(dead_letter_id=dead_letter_id, user=user)
            self.stdout.write(f"{row.id}: {row.status}")

    # --- arguments -------------------------------------------------------------------
    def _queryset(self, options: dict[str, Any]) -> Any:
        filters = {k: options.get(k) for k in FILTERS}
        filters["task_name"] = filters.pop("task")
        queryset = selectors.dead_letter_list(filters=filters)
        # Task dead letters only: events.<name> rows belong to replay_event_dead_letters.
        event_queues = {q for q in queryset.values_list("queue", flat=True).distinct() if is_event_queue(q)}
        return queryset.exclude(queue__in=event_queues)

    def _limit(self, options: dict[str, Any]) -> int:
        if options["limit"] < 1:
            raise CommandError("--limit must be at least 1.")
        return options["limit"]

    def _ids(self, raw: list[str]) -> list[uuid.UUID]:
        try:
            return [uuid.UUID(value) for value in raw]
        except ValueError as exc:
            raise CommandError(f"not a dead letter id: {exc}") from exc

    def _user(self, username: str | None) -> Any:
        if not username:
            return None
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        return user
