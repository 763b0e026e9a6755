"""``python manage.py generate_training_data [--sessions N] [--seed S] ...``: synthetic sessions for tests and demos.

Writes sessions of structured ``user_action`` events (personas cycling through
workflows, see ``apps.batch.synthetic``) through the real context services, so
the training job has something to learn and measurably beat the baseline on.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.batch.synthetic import SyntheticConfig, training_data_generate


class Command(BaseCommand):
    help = "Create synthetic sessions with recurring action patterns."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sessions", type=int, default=200)
        parser.add_argument("--min-actions", type=int, default=30)
        parser.add_argument("--max-actions", type=int, default=60)
        parser.add_argument("--noise", type=float, default=0.05, help="probability of a random extra action")
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--users", type=int, default=5)
        parser.add_argument(
            "--text-every", type=int, default=0, help="also add a context_update text after every N actions (0: none)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["sessions"] < 1 or options["min_actions"] < 2 or options["max_actions"] < options["min_actions"]:
            raise CommandError("Need --sessions >= 1 and 2 <= --min-actions <= --max-actions.")
        if not 0 <= options["noise"] < 1:
            raise CommandError("--noise must be in [0, 1).")
        config = SyntheticConfig(
            sessions=options["sessions"],
            min_actions=options["min_actions"],
            max_actions=options["max_actions"],
            noise=options["noise"],
            seed=options["seed"],
        )
        counts = training_data_generate(config=config, users=options["users"], text_every=options["text_every"])
        self.stdout.write(json.dumps(counts))
