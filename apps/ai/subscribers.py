"""``ai_trigger``: a context update or a user action asks the AI for suggestions.

Calls ``apps.ai.services.inference_request_trigger``, which creates or
coalesces the session's pending inference request (idempotent per
``trigger_seq``). Context updates feed related-context retrieval; user actions
feed the next-action ranking, so both trigger. Within one batch only the
latest trigger of each session counts: the AI reads the whole recent context.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from apps.ai.services import inference_request_trigger
from apps.eventbus import contracts
from apps.eventbus.contracts import Event
from apps.eventbus.subscribers import Subscriber, subscriber_register


@subscriber_register
class AiTriggerSubscriber(Subscriber):
    name = "ai_trigger"
    patterns = (contracts.CONTEXT_UPDATED, contracts.USER_ACTION)

    def handle(self, event: Event) -> None:
        self.handle_batch([event])

    def handle_batch(self, events: Sequence[Event]) -> None:
        latest: dict[uuid.UUID, Event] = {}
        for event in events:
            # Notes are for people; context updates carry text, user actions the action sequence.
            if event.session_id is None:
                continue
            if event.event_type == contracts.CONTEXT_UPDATED and event.data.get("event_type") != "context_update":
                continue
            current = latest.get(event.session_id)
            if current is None or event.data["seq"] > current.data["seq"]:
                latest[event.session_id] = event
        for session_id, event in sorted(latest.items(), key=lambda item: str(item[0])):
            inference_request_trigger(
                session_id=session_id,
                trigger_seq=int(event.data["seq"]),
                user_id=event.user_id,
                correlation_id=event.correlation_id,
            )
