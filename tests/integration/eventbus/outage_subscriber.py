"""A subscriber for tests/integration/eventbus/test_database_outage.py, run by a real subscriber process.

Its handler does nothing: what the outage breaks is the runner's own write
(the ``ProcessedEvent`` rows, in the same transaction as any handler's).
"""

from __future__ import annotations

from apps.eventbus.subscribers.base import Subscriber


class OutageRecording(Subscriber):
    name = "test_outage"
    patterns = ("session.*",)
    batch_size = 10

    def handle(self, event):
        pass
