"""The correlation id on the log lines of the hops without an HTTP request: subscribers and broadcasts."""

from __future__ import annotations

import logging
import uuid

import pytest
from django.utils import timezone

from apps.common.logging import CorrelationIdFilter, get_correlation_id, set_correlation_id
from apps.eventbus.contracts import event_build
from apps.eventbus.subscribers.base import Subscriber
from apps.eventbus.subscribers.runner import subscriber_apply


class Seeing(Subscriber):
    name = "ops_test_seeing"
    patterns = ("session.*",)

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def handle(self, event) -> None:
        self.seen.append(get_correlation_id())


def _event(cid: str | None):
    return event_build(
        event_type="session.closed",
        session_id=uuid.uuid4(),
        user_id=None,
        data={},
        occurred_at=timezone.now(),
        correlation_id=cid,
    )


@pytest.mark.django_db
def test_a_subscriber_handles_an_event_under_its_correlation_id():
    sub = Seeing()

    subscriber_apply(subscriber=sub, events=[_event("evt-corr-1")])
    subscriber_apply(subscriber=sub, events=[_event("a"), _event("b")])  # mixed batch: no single id

    assert sub.seen == ["evt-corr-1", None, None]
    assert get_correlation_id() is None


def test_a_broadcast_logs_under_the_current_correlation_id():
    from apps.realtime.broadcast import session_broadcast

    records: list[logging.LogRecord] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Grab(level=logging.DEBUG)
    handler.addFilter(CorrelationIdFilter())
    logger = logging.getLogger("apps.realtime.broadcast")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    token = set_correlation_id("bcast-7")
    try:
        session_broadcast(session_id=uuid.uuid4(), message={"type": "suggestion", "items": []})
    finally:
        from apps.common.logging import correlation_id

        correlation_id.reset(token)
        logger.removeHandler(handler)
        logger.setLevel(previous)

    sent = [r for r in records if r.getMessage() == "broadcast sent"]
    assert sent and sent[0].correlation_id == "bcast-7"
