"""``python manage.py run_deadletter_archiver``: drain every ``*.dlq`` into DeadLetter rows.

With ``METRICS_PORT`` set it serves its metrics there (``ce_dead_letters_archived_total``).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.common.metrics import process_metrics_serve
from apps.ops.deadletters.archiver import run_archiver


class Command(BaseCommand):
    help = "Drain the dead-letter queues into DeadLetter rows (acks after commit)."

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()

        def _stop(signum: int, frame: Any) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        process_metrics_serve(role="archiver")
        self.stdout.write("dead-letter archiver started")
        run_archiver(broker_url=settings.BROKER_URL, stop_event=stop)
        self.stdout.write("dead-letter archiver stopped")
