"""Every emitted event validates against its schema; the contracts refuse what does not."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from apps.context import services as context_services
from apps.context.services import EventInput
from apps.eventbus import contracts
from apps.eventbus.contracts import ContractError, event_build, event_parse
from apps.eventbus.models import OutboxMessage

SAMPLES: dict[str, dict] = {
    "session.created": {"title": "t", "metadata": {"a": 1}},
    "session.closed": {"closed_at": "2026-01-01T00:00:00+00:00"},
    "participant.joined": {"participant_user_id": 2, "username": "bob", "role": "editor"},
    "participant.left": {"participant_user_id": 2, "username": "bob", "removed": True},
    "context.updated": {"seq": 3, "event_type": "context_update", "data": {"text": "x"}},
    "user.action": {"seq": 4, "action": "open_doc", "target": "d1", "data": {"action": "open_doc"}},
    "suggestion.generated": {"suggestion_ids": [str(uuid.uuid4())], "trigger_seq": 3, "model_version": "m1"},
    "suggestion.feedback": {"suggestion_id": str(uuid.uuid4()), "accepted": True},
    "ai.processing": {"inference_request_id": str(uuid.uuid4()), "status": "running"},
}


def test_every_event_type_has_a_schema_and_a_sample():
    assert set(contracts.EVENT_TYPES) == set(SAMPLES)


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_sample_round_trips_through_the_wire(event_type):
    event = event_build(
        event_type=event_type,
        session_id=uuid.uuid4(),
        user_id=1,
        data=SAMPLES[event_type],
        occurred_at=timezone.now(),
        correlation_id="c",
    )
    wire = event.to_wire()
    assert set(wire) == {
        "event_id",
        "event_type",
        "version",
        "occurred_at",
        "session_id",
        "user_id",
        "correlation_id",
        "data",
    }
    assert event_parse(wire) == event
    assert event_parse(event.model_dump_json().encode()) == event


def _required_keys(event_type: str) -> list[str]:
    return [name for name, f in contracts.SCHEMAS[(event_type, 1)].model_fields.items() if f.is_required()]


# session.closed has no required data keys (closed_at is optional).
@pytest.mark.parametrize("event_type", sorted(t for t in SAMPLES if _required_keys(t)))
def test_data_missing_a_required_key_is_refused(event_type):
    required = _required_keys(event_type)
    data = {k: v for k, v in SAMPLES[event_type].items() if k != required[0]}
    with pytest.raises(ContractError):
        event_build(event_type=event_type, session_id=None, user_id=None, data=data, occurred_at=timezone.now())


def test_envelope_rules():
    good = event_build(
        event_type="session.closed", session_id=None, user_id=None, data={}, occurred_at=timezone.now()
    ).to_wire()
    for broken in (
        {**good, "version": 99},
        {**good, "event_type": "session.exploded"},
        {**good, "surprise": 1},
        {**good, "occurred_at": "2026-01-01T00:00:00"},  # naive
        {k: v for k, v in good.items() if k != "event_id"},
    ):
        with pytest.raises(ContractError):
            event_parse(broken)
    # Additive changes inside a version: unknown data keys are kept.
    assert event_parse({**good, "data": {"new_key": 1}}).typed_data.model_extra == {"new_key": 1}
    with pytest.raises(ContractError):
        event_parse(b"not json")


@pytest.mark.django_db
def test_every_event_the_context_services_emit_validates(session_factory, user, other_user):
    session = session_factory(metadata={"k": "v"})
    context_services.participant_add(session=session, actor=user, username=other_user.username, role="editor")
    context_services.context_event_append(
        session=session,
        author=other_user,
        events=[
            EventInput("context_update", {"text": "a", "extra": [1, 2]}, "m1"),
            EventInput("user_action", {"action": "share", "target": {"doc": 1}}),
            EventInput("user_action", {"action": 7}),
            EventInput("note", {}),
        ],
    )
    context_services.participant_remove(session=session, actor=user, username=other_user.username)
    context_services.session_close(session=session, actor=user)
    rows = list(OutboxMessage.objects.order_by("id"))
    seen = set()
    for row in rows:
        event = event_parse(row.body)
        assert row.routing_key == event.event_type and row.message_id == event.event_id
        assert event.session_id == session.id
        event.typed_data  # noqa: B018 - validates data against its own model
        seen.add(event.event_type)
    assert seen == {
        "session.created",
        "participant.joined",
        "context.updated",
        "user.action",
        "participant.left",
        "session.closed",
    }
