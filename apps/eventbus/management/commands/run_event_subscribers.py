"""``python manage.py run_event_subscribers [NAME ...]``: consume the event subscribers' queues."""

from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import import_string

from apps.eventbus.subscribers import registered_subscribers
from apps.eventbus.subscribers.runner import SubscriberRunner


class Command(BaseCommand):
    help = "Run event subscribers (all registered ones, or those named)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("names", nargs="*", help="Subscriber names to run (default: all registered).")
        parser.add_argument(
            "--subscriber",
            action="append",
            default=[],
            metavar="DOTTED.PATH",
            help="An extra Subscriber class to run (repeatable).",
        )
        parser.add_argument(
            "--max-wait",
            type=float,
            default=0.05,
            help="Seconds a message waits for its batch to fill before it is applied.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        classes = registered_subscribers()
        by_name = {cls.name: cls for cls in classes}
        if options["names"]:
            unknown = sorted(set(options["names"]) - set(by_name))
            if unknown:
                raise CommandError(f"Unknown subscribers {unknown}; registered: {sorted(by_name)}")
            classes = [by_name[name] for name in options["names"]]
        elif options["subscriber"]:
            classes = []
        try:
            classes += [import_string(path) for path in options["subscriber"]]
        except ImportError as exc:
            raise CommandError(str(exc)) from exc
        runner = SubscriberRunner(subscribers=[cls() for cls in classes], max_wait=options["max_wait"])

        def stop(signum: int, frame: Any) -> None:
            runner.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        runner.connect()
        self.stdout.write(f"subscribers ready: {', '.join(sorted(runner.slots))}")
        self.stdout.flush()
        runner.ready_event.set()
        runner.run()
        self.stdout.write(
            f"subscribers stopped; applied {runner.stats.applied}, "
            f"duplicates {runner.stats.duplicates}, dead-lettered {runner.stats.dead_lettered}"
        )
