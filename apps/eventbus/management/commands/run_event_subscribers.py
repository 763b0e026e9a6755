"""``python manage.py run_event_subscribers [NAME ...]``: consume the event subscribers' queues.

With ``METRICS_PORT`` set it serves its metrics there: events applied, duplicates
and dead-lettered (``ce_subscriber_events_total``), broker reconnects, database waits.
They are recorded from the runner's own tallies (``MeteredRunnerStats``), so the
runner keeps no metrics code of its own.
"""

from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import import_string

from apps.common.metrics import (
    SUBSCRIBER_BROKER_RECONNECTS,
    SUBSCRIBER_DATABASE_WAITS,
    SUBSCRIBER_EVENTS,
    process_metrics_serve,
)
from apps.eventbus.subscribers import registered_subscribers
from apps.eventbus.subscribers.runner import RunnerStats, SubscriberRunner

# Each tally of the runner, and the counter a rise of it increments.
_COUNTERS = {
    "applied": SUBSCRIBER_EVENTS.labels(outcome="applied"),
    "duplicates": SUBSCRIBER_EVENTS.labels(outcome="duplicate"),
    "dead_lettered": SUBSCRIBER_EVENTS.labels(outcome="dead_lettered"),
    "broker_reconnects": SUBSCRIBER_BROKER_RECONNECTS,
    "database_waits": SUBSCRIBER_DATABASE_WAITS,
}


class MeteredRunnerStats(RunnerStats):
    """The runner's tallies; every rise of one is also counted in its Prometheus counter."""

    def __setattr__(self, name: str, value: Any) -> None:
        counter = _COUNTERS.get(name)
        if counter is not None:
            rise = value - getattr(self, name, 0)
            if rise > 0:
                counter.inc(rise)
        super().__setattr__(name, value)


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
        runner.stats = MeteredRunnerStats()

        def stop(signum: int, frame: Any) -> None:
            runner.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        process_metrics_serve(role="subscribers")
        runner.connect()
        self.stdout.write(f"subscribers ready: {', '.join(sorted(runner.slots))}")
        self.stdout.flush()
        runner.ready_event.set()
        runner.run()
        self.stdout.write(
            f"subscribers stopped; applied {runner.stats.applied}, "
            f"duplicates {runner.stats.duplicates}, dead-lettered {runner.stats.dead_lettered}"
        )
