"""Context services write their domain events to the outbox in the same transaction."""

from __future__ import annotations

import pytest

from apps.common.exceptions import ApplicationError
from apps.context import services as context_services
from apps.context.services import EventInput
from apps.eventbus.contracts import event_parse
from apps.eventbus.models import OutboxMessage

pytestmark = pytest.mark.django_db


def _types() -> list[str]:
    return list(OutboxMessage.objects.order_by("id").values_list("routing_key", flat=True))


def test_session_lifecycle_emits_its_events(session_factory, user, other_user):
    session = session_factory()
    context_services.participant_add(session=session, actor=user, username=other_user.username, role="editor")
    # A role change of an active participant is not a join.
    context_services.participant_add(session=session, actor=user, username=other_user.username, role="viewer")
    context_services.participant_remove(session=session, actor=other_user, username=other_user.username)
    context_services.session_update(session=session, actor=user, title="renamed")
    context_services.session_close(session=session, actor=user)
    assert _types() == ["session.created", "participant.joined", "participant.left", "session.closed"]
    left = event_parse(OutboxMessage.objects.get(routing_key="participant.left").body)
    assert left.data["participant_user_id"] == other_user.pk and left.data["removed"] is False


def test_append_emits_one_event_per_created_event_only(session_factory, user):
    session = session_factory()
    OutboxMessage.objects.all().delete()
    batch = [
        EventInput("context_update", {"text": "a"}, "m1"),
        EventInput("user_action", {"action": "open_doc", "target": "doc-1"}, "m2"),
        EventInput("note", {"text": "n"}, ""),
    ]
    context_services.context_event_append(session=session, author=user, events=batch)
    # The retry of m1 and m2 writes no event again.
    context_services.context_event_append(session=session, author=user, events=batch[:2])
    events = [event_parse(body) for body in OutboxMessage.objects.order_by("id").values_list("body", flat=True)]
    assert [e.event_type for e in events] == ["context.updated", "user.action", "context.updated"]
    assert [e.data["seq"] for e in events] == [1, 2, 3]
    assert events[1].data["action"] == "open_doc" and events[1].data["target"] == "doc-1"
    assert all(e.session_id == session.id and e.user_id == user.pk for e in events)


def test_refused_append_writes_no_event(session_factory, user):
    session = session_factory()
    context_services.session_close(session=session, actor=user)
    before = OutboxMessage.objects.count()
    with pytest.raises(ApplicationError):
        context_services.context_event_append(session=session, author=user, events=[EventInput("note", {})])
    assert OutboxMessage.objects.count() == before
