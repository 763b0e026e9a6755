"""``inference_inputs_get``: what the inference worker reads from a session, authors included."""

from __future__ import annotations

import pytest

from apps.context import selectors, services
from apps.context.services import EventInput

pytestmark = pytest.mark.django_db


def _append(session, author, texts):
    return services.context_event_append(
        session=session,
        author=author,
        events=[EventInput(event_type="context_update", data={"text": t}) for t in texts],
    )


def test_candidates_and_the_trigger_carry_their_authors_in_the_same_queries(
    session_factory, user, other_user, make_user, django_assert_num_queries
):
    # Given alice, bob and a user deleted since wrote a session's events, and bob the trigger
    session = session_factory()
    gone = make_user("carol")
    for person in (other_user, gone):
        services.participant_add(session=session, actor=user, username=person.username, role="editor")
    _append(session, user, ["first from alice"])
    _append(session, other_user, ["then bob"])
    _append(session, gone, ["carol, deleted later"])
    services.context_event_append(
        session=session, author=user, events=[EventInput(event_type="user_action", data={"action": "save"})]
    )
    [trigger] = _append(session, other_user, ["bob again, the trigger"])
    gone.delete()

    # When the worker's selector reads an auto request's inputs: the trigger, then the candidates
    with django_assert_num_queries(2):
        inputs = selectors.inference_inputs_get(
            session_id=session.pk, upto_seq=trigger.seq, from_trigger=True, actions_limit=0
        )

    # Then the trigger's author and each candidate's are there (None for the deleted user)
    assert inputs.trigger_seq == trigger.seq and inputs.trigger_author_id == other_user.pk
    assert [(c["seq"], c["author_id"]) for c in inputs.candidates] == [(3, None), (2, other_user.pk), (1, user.pk)]
    assert all(c["same_session"] and c["session_id"] == str(session.pk) for c in inputs.candidates)


def test_a_query_request_has_no_trigger_author(session_factory, user):
    session = session_factory()
    _append(session, user, ["only event"])
    inputs = selectors.inference_inputs_get(session_id=session.pk, upto_seq=None, from_trigger=False, actions_limit=0)
    assert inputs.trigger_author_id is None and inputs.trigger_seq is None
    assert [c["author_id"] for c in inputs.candidates] == [user.pk]
