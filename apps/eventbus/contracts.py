"""Domain event contracts: the one module every producer and subscriber uses.

An event on the wire (the AMQP body, routing key = ``event_type``) is::

    {"event_id", "event_type", "version", "occurred_at", "session_id",
     "user_id", "correlation_id", "data"}

Each ``(event_type, version)`` names one pydantic model for ``data``. Within a
version, changes are additive only (new optional keys; models allow extra keys
so an old consumer keeps reading a newer producer's events); a breaking change
is a new version registered beside the old one, and consumers read both until
every producer has moved.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator


class EventData(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class SessionCreatedV1(EventData):
    title: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionClosedV1(EventData):
    closed_at: AwareDatetime | None = None


class ParticipantJoinedV1(EventData):
    participant_user_id: int
    username: str
    role: Literal["owner", "editor", "viewer"]


class ParticipantLeftV1(EventData):
    participant_user_id: int
    username: str
    # True when the owner removed the participant, False when they left.
    removed: bool = False


class ContextUpdatedV1(EventData):
    seq: int = Field(ge=1)
    event_type: Literal["context_update", "note"]
    data: dict[str, Any]
    client_msg_id: str = ""


class UserActionV1(EventData):
    seq: int = Field(ge=1)
    action: str | None = None
    target: Any = None
    data: dict[str, Any] = Field(default_factory=dict)


class SuggestionGeneratedV1(EventData):
    suggestion_ids: list[str]
    inference_request_id: str | None = None
    trigger_seq: int | None = None
    model_version: str = ""


class SuggestionFeedbackV1(EventData):
    suggestion_id: str
    accepted: bool


class AiProcessingV1(EventData):
    inference_request_id: str
    status: Literal["pending", "running", "done", "failed"]
    trigger_seq: int | None = None


SESSION_CREATED = "session.created"
SESSION_CLOSED = "session.closed"
PARTICIPANT_JOINED = "participant.joined"
PARTICIPANT_LEFT = "participant.left"
CONTEXT_UPDATED = "context.updated"
USER_ACTION = "user.action"
SUGGESTION_GENERATED = "suggestion.generated"
SUGGESTION_FEEDBACK = "suggestion.feedback"
AI_PROCESSING = "ai.processing"

# (event_type, version) -> the model of ``data``.
SCHEMAS: dict[tuple[str, int], type[EventData]] = {
    (SESSION_CREATED, 1): SessionCreatedV1,
    (SESSION_CLOSED, 1): SessionClosedV1,
    (PARTICIPANT_JOINED, 1): ParticipantJoinedV1,
    (PARTICIPANT_LEFT, 1): ParticipantLeftV1,
    (CONTEXT_UPDATED, 1): ContextUpdatedV1,
    (USER_ACTION, 1): UserActionV1,
    (SUGGESTION_GENERATED, 1): SuggestionGeneratedV1,
    (SUGGESTION_FEEDBACK, 1): SuggestionFeedbackV1,
    (AI_PROCESSING, 1): AiProcessingV1,
}

# The version producers write today.
CURRENT_VERSION: dict[str, int] = {}
for _type, _version in SCHEMAS:
    CURRENT_VERSION[_type] = max(_version, CURRENT_VERSION.get(_type, 0))

EVENT_TYPES: tuple[str, ...] = tuple(CURRENT_VERSION)


class Event(BaseModel):
    """The envelope. ``data`` is checked against its type's schema on construction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID
    event_type: str
    version: int = Field(ge=1)
    occurred_at: AwareDatetime
    session_id: uuid.UUID | None
    user_id: int | None
    correlation_id: str | None = None
    data: dict[str, Any]

    @model_validator(mode="after")
    def _data_matches_schema(self) -> Event:
        schema = SCHEMAS.get((self.event_type, self.version))
        if schema is None:
            raise ValueError(f"unknown event type/version {self.event_type!r} v{self.version}")
        schema.model_validate(self.data)
        return self

    @property
    def typed_data(self) -> EventData:
        return SCHEMAS[(self.event_type, self.version)].model_validate(self.data)

    def to_wire(self) -> dict[str, Any]:
        # By hand, not model_dump(mode="json"): ``data`` is JSON already (it
        # came from the wire or from its schema's JSON dump), and this runs
        # once per event on the append path.
        return {
            "event_id": str(self.event_id),
            "event_type": self.event_type,
            "version": self.version,
            "occurred_at": self.occurred_at.isoformat(),
            "session_id": str(self.session_id) if self.session_id is not None else None,
            "user_id": self.user_id,
            "correlation_id": self.correlation_id,
            "data": self.data,
        }


class ContractError(ValueError):
    """An event that does not match its contract (raised as ``ApplicationError`` by services)."""

    def __init__(self, message: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


def event_build(
    *,
    event_type: str,
    session_id: uuid.UUID | str | None,
    user_id: int | None,
    data: dict[str, Any],
    occurred_at: datetime,
    correlation_id: str | None = None,
    event_id: uuid.UUID | None = None,
    version: int | None = None,
) -> Event:
    """A validated event; ``data`` is normalised through its schema (JSON-ready, defaults filled)."""
    if event_type not in CURRENT_VERSION:
        raise ContractError(f"Unknown event type {event_type!r}.", errors=[{"event_type": sorted(EVENT_TYPES)}])
    version = version or CURRENT_VERSION[event_type]
    schema = SCHEMAS.get((event_type, version))
    if schema is None:
        raise ContractError(f"Unknown version {version} of {event_type!r}.")
    try:
        normalised = schema.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        raise ContractError(
            f"Event {event_type!r} does not match its contract.",
            errors=exc.errors(include_url=False, include_context=False, include_input=False),
        ) from exc
    # The envelope's fields are checked by hand and the model built without a
    # second validation pass: event_build sits on the append path, where a
    # full validation of every envelope doubled the cost of a 500-event batch.
    if session_id is not None and not isinstance(session_id, uuid.UUID):
        try:
            session_id = uuid.UUID(str(session_id))
        except ValueError as exc:
            raise ContractError("session_id must be a UUID.", errors=[{"session_id": str(session_id)}]) from exc
    if user_id is not None and (isinstance(user_id, bool) or not isinstance(user_id, int)):
        raise ContractError("user_id must be an integer.", errors=[{"user_id": repr(user_id)}])
    if not isinstance(occurred_at, datetime) or occurred_at.utcoffset() is None:
        raise ContractError("occurred_at must be a timezone-aware datetime.")
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise ContractError("correlation_id must be a string.")
    return Event.model_construct(
        event_id=event_id or uuid.uuid4(),
        event_type=event_type,
        version=version,
        occurred_at=occurred_at,
        session_id=session_id,
        user_id=user_id,
        correlation_id=correlation_id,
        data=normalised,
    )


def event_parse(payload: dict[str, Any] | bytes | str) -> Event:
    """Parse and validate an event from the wire (what subscribers receive)."""
    try:
        if isinstance(payload, (bytes, str)):
            return Event.model_validate_json(payload)
        return Event.model_validate(payload)
    except ValidationError as exc:
        raise ContractError(
            "Event does not match its contract.",
            errors=exc.errors(include_url=False, include_context=False, include_input=False),
        ) from exc
