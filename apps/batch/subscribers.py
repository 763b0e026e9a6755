"""``activity``: per-session counters (events by type, participants, suggestions)."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection

from apps.eventbus import contracts
from apps.eventbus.contracts import Event
from apps.eventbus.subscribers import Subscriber, subscriber_register


@dataclass
class _Delta:
    by_type: Counter = field(default_factory=Counter)
    joined: int = 0
    left: int = 0
    generated: int = 0
    accepted: int = 0
    rejected: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None


@subscriber_register
class ActivitySubscriber(Subscriber):
    name = "activity"
    patterns = ("#",)
    batch_size = 500

    def handle(self, event: Event) -> None:
        self.handle_batch([event])

    def handle_batch(self, events: Sequence[Event]) -> None:
        deltas: dict[uuid.UUID, _Delta] = defaultdict(_Delta)
        for event in events:
            if event.session_id is None:
                continue
            delta = deltas[event.session_id]
            delta.by_type[event.event_type] += 1
            if event.event_type in (contracts.SESSION_CREATED, contracts.PARTICIPANT_JOINED):
                # session.created stands for the owner joining.
                delta.joined += 1
            elif event.event_type == contracts.PARTICIPANT_LEFT:
                delta.left += 1
            elif event.event_type == contracts.SUGGESTION_GENERATED:
                delta.generated += len(event.data.get("suggestion_ids") or [])
            elif event.event_type == contracts.SUGGESTION_FEEDBACK:
                if event.data.get("accepted"):
                    delta.accepted += 1
                else:
                    delta.rejected += 1
            delta.first_at = min(filter(None, (delta.first_at, event.occurred_at)))
            delta.last_at = max(filter(None, (delta.last_at, event.occurred_at)))
        if not deltas:
            return
        # One upsert per session; sorted so two runners never deadlock on row order.
        rows = sorted(deltas.items(), key=lambda item: str(item[0]))
        with connection.cursor() as cursor:
            for session_id, d in rows:
                cursor.execute(
                    """
                    INSERT INTO eventbus_sessionactivity AS a
                      (session_id, events_by_type, events_total, participants_joined, participants_left,
                       suggestions_generated, suggestions_accepted, suggestions_rejected,
                       first_event_at, last_event_at, updated_at)
                    VALUES (%s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, clock_timestamp())
                    ON CONFLICT (session_id) DO UPDATE SET
                      events_by_type = (
                        SELECT COALESCE(jsonb_object_agg(k, COALESCE((a.events_by_type ->> k)::bigint, 0)
                                                         + COALESCE((EXCLUDED.events_by_type ->> k)::bigint, 0)),
                                        '{}'::jsonb)
                        FROM jsonb_object_keys(a.events_by_type || EXCLUDED.events_by_type) AS k
                      ),
                      events_total = a.events_total + EXCLUDED.events_total,
                      participants_joined = a.participants_joined + EXCLUDED.participants_joined,
                      participants_left = a.participants_left + EXCLUDED.participants_left,
                      suggestions_generated = a.suggestions_generated + EXCLUDED.suggestions_generated,
                      suggestions_accepted = a.suggestions_accepted + EXCLUDED.suggestions_accepted,
                      suggestions_rejected = a.suggestions_rejected + EXCLUDED.suggestions_rejected,
                      first_event_at = LEAST(a.first_event_at, EXCLUDED.first_event_at),
                      last_event_at = GREATEST(a.last_event_at, EXCLUDED.last_event_at),
                      updated_at = clock_timestamp()
                    """,
                    [
                        session_id,
                        json.dumps(dict(d.by_type)),
                        sum(d.by_type.values()),
                        d.joined,
                        d.left,
                        d.generated,
                        d.accepted,
                        d.rejected,
                        d.first_at,
                        d.last_at,
                    ],
                )
