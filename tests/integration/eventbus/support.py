"""Subscribers that exist only for tests (the runner imports them by dotted path)."""

from __future__ import annotations

from apps.eventbus import contracts
from apps.eventbus.contracts import Event
from apps.eventbus.subscribers.base import Subscriber


class PoisonSensitiveSubscriber(Subscriber):
    """Refuses any context update whose data has ``poison``; applies (records) the rest."""

    name = "test_poison"
    patterns = (contracts.CONTEXT_UPDATED,)
    batch_size = 50

    def handle(self, event: Event) -> None:
        if event.data["data"].get("poison"):
            raise ValueError(f"refusing poison event seq={event.data['seq']}")
