"""The subscriber contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from apps.eventbus.contracts import Event


class Subscriber:
    """Subclass with ``name`` (queue ``events.<name>``), ``patterns`` (topic bindings) and ``handle``.

    ``handle`` runs inside the transaction that records the event as processed,
    so its database writes and the dedupe row commit together. It must not
    publish or broadcast directly (use the outbox). Raise to refuse an event:
    it is dead-lettered alone. ``handle_batch`` receives several new events in
    one transaction; override it to aggregate (the default calls ``handle``
    for each). Events may arrive out of order and more than once across
    relays; the runner drops repeats by ``event_id``.
    """

    name: ClassVar[str]
    patterns: ClassVar[Sequence[str]]
    # Messages taken per transaction (and twice that prefetched).
    batch_size: ClassVar[int] = 200

    def handle(self, event: Event) -> None:
        raise NotImplementedError

    def handle_batch(self, events: Sequence[Event]) -> None:
        for event in events:
            self.handle(event)
