"""``ai_trigger``: a context update asks the AI for suggestions.

Calls ``apps.ai.services.inference_request_trigger``, which creates or
coalesces the session's pending inference request (idempotent per
``trigger_seq``). Within one batch only the latest update of each session
triggers: the AI reads the whole recent context anyway.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from apps.eventbus import contracts
from apps.eventbus.contracts import Event
from apps.eventbus.subscribers.base import Subscriber

logger = logging.getLogger("apps.eventbus.subscribers")


def _trigger_function():  # noqa: ANN202 - the AI service, or None before the AI app provides it
    try:
        from apps.ai.services import inference_request_trigger
    except ImportError:
        return None
    return inference_request_trigger


class AiTriggerSubscriber(Subscriber):
    name = "ai_trigger"
    patterns = (contracts.CONTEXT_UPDATED,)

    def handle(self, event: Event) -> None:
        self.handle_batch([event])

    def handle_batch(self, events: Sequence[Event]) -> None:
        latest: dict[uuid.UUID, Event] = {}
        for event in events:
            # Notes are for people; only context updates carry text for the AI.
            if event.session_id is None or event.data.get("event_type") != "context_update":
                continue
            current = latest.get(event.session_id)
            if current is None or event.data["seq"] > current.data["seq"]:
                latest[event.session_id] = event
        if not latest:
            return
        trigger = _trigger_function()
        if trigger is None:
            logger.info("ai_trigger: apps.ai.services.inference_request_trigger not available yet; skipped",
                        extra={"sessions": len(latest)})
            return
        for session_id, event in sorted(latest.items(), key=lambda item: str(item[0])):
            trigger(session_id=session_id, trigger_seq=int(event.data["seq"]), user_id=event.user_id,
                    correlation_id=event.correlation_id)
