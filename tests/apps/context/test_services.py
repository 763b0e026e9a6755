"""Services and selectors of apps.context, called directly."""

from __future__ import annotations

import pytest

from apps.common.exceptions import ApplicationError, Conflict, NotFound, PermissionDenied, ValidationFailed
from apps.context import selectors, services
from apps.context.models import ContextEvent, Participant, Session
from apps.context.services import EventInput

pytestmark = pytest.mark.django_db


def test_session_create_update_close_delete(user, other_user):
    session = services.session_create(owner=user, title="t", metadata={"a": 1})
    assert Participant.objects.get(session=session, user=user).role == "owner"
    services.session_update(session=session, actor=user, title="t2", metadata={"b": 2})
    closed = services.session_close(session=session, actor=user)
    assert closed.state == "closed" and closed.closed_at is not None
    with pytest.raises(NotFound):
        services.session_delete(session=session, actor=other_user)
    services.session_delete(session=session, actor=user)
    assert not Session.objects.exists()


def test_participants_add_readd_and_remove(user, other_user):
    session = services.session_create(owner=user, title="t")
    services.participant_add(session=session, actor=user, username=other_user.username, role="viewer")
    with pytest.raises(PermissionDenied):
        services.participant_add(session=session, actor=other_user, username=user.username, role="editor")
    services.participant_remove(session=session, actor=other_user, username=other_user.username)
    assert selectors.participant_get(session_id=session.pk, user=other_user) is None
    again = services.participant_add(session=session, actor=user, username=other_user.username, role="editor")
    assert again.left_at is None and again.role == "editor"
    # The owner and a missing name get the same refusal (no name is told to exist).
    with pytest.raises(ValidationFailed) as owner:
        services.participant_add(session=session, actor=user, username=user.username, role="editor")
    with pytest.raises(ValidationFailed) as ghost:
        services.participant_add(session=session, actor=user, username="ghost", role="editor")
    assert owner.value.as_dict() == ghost.value.as_dict()
    assert owner.value.code == "user_not_addable"


def test_append_dedupes_by_client_msg_id_inside_a_mixed_batch(user):
    session = services.session_create(owner=user, title="t")
    services.context_event_append(session=session, author=user, events=[EventInput("note", {"v": 1}, "a")])
    stored = services.context_event_append(
        session=session, author=user, events=[EventInput("note", {"v": 2}, "b"), EventInput("note", {"v": 1}, "a")]
    )
    assert [(e.seq, e.was_created) for e in stored] == [(2, True), (1, False)]
    assert selectors.session_last_seq(session_id=session.pk) == 2


def test_append_refuses_closed_sessions_and_viewers(user, other_user):
    session = services.session_create(owner=user, title="t")
    services.participant_add(session=session, actor=user, username=other_user.username, role="viewer")
    with pytest.raises(PermissionDenied):
        services.context_event_append(session=session, author=other_user, events=[EventInput("note")])
    services.session_close(session=session, actor=user)
    with pytest.raises(Conflict):
        services.context_event_append(session=session, author=user, events=[EventInput("note")])
    assert not ContextEvent.objects.exists()


def test_selectors_list_filter_and_replay(user, other_user):
    mine = services.session_create(owner=user, title="Alpha plan")
    services.session_create(owner=other_user, title="Alpha other")
    assert [s.pk for s in selectors.session_list_for_user(user=user, search="alpha")] == [mine.pk]
    assert not selectors.session_list_for_user(user=user, state="closed").exists()
    services.context_event_append(session=mine, author=user, events=[EventInput("note", {"i": i}) for i in range(5)])
    assert [e.seq for e in selectors.context_event_list(session=mine, after_seq=2)] == [3, 4, 5]
    assert [e.seq for e in selectors.context_event_list(session=mine, after_seq=0, limit=2)] == [1, 2]
    with pytest.raises(NotFound):
        selectors.session_get_for_user(session_id=mine.pk, user=other_user)
    with pytest.raises(NotFound):
        selectors.session_get_for_user(session_id="not-a-uuid", user=user)


def test_preferences_roundtrip_and_unknown_fields(user):
    assert selectors.preferences_get(user=user).ai_enabled is True
    services.preferences_update(user=user, ai_enabled=False, suggestion_kinds=["next_action"])
    assert selectors.preferences_get(user=user).suggestion_kinds == ["next_action"]
    with pytest.raises(ApplicationError):
        services.preferences_update(user=user, colour="red")
