"""``python manage.py run_outbox_relay``: publish committed outbox rows (several may run at once).

With ``METRICS_PORT`` set it serves its metrics there (rows published, their lag, failures).
"""

from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand

from apps.common.metrics import process_metrics_serve
from apps.eventbus.relay import OutboxRelay


class Command(BaseCommand):
    help = "Publish committed outbox rows to RabbitMQ with publisher confirms (at least once)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--batch-size", type=int, default=500, help="Rows claimed, published and confirmed per transaction."
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=2.0,
            help="Seconds between polls when no NOTIFY arrives (the fallback).",
        )
        parser.add_argument(
            "--max-attempts", type=int, default=5, help="Per-row publish failures before the row is parked."
        )
        parser.add_argument("--once", action="store_true", help="Drain what is pending, then exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        relay = OutboxRelay(
            batch_size=options["batch_size"],
            poll_interval=options["poll_interval"],
            max_attempts=options["max_attempts"],
        )

        def stop(signum: int, frame: Any) -> None:
            relay.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        process_metrics_serve(role="relay")
        self.stdout.write("outbox relay started", ending="\n")
        self.stdout.flush()
        relay.run(once=options["once"])
        relay.close()
        self.stdout.write(f"outbox relay stopped; published {relay.published_total}")
