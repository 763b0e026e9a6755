from apps.context import selectors, services
from apps.context.services import EventInput


def test_append_assigns_gap_free_seq(db, session_factory, user):
    session = session_factory()
    events = services.context_event_append(
        session=session, author=user, events=[EventInput("note", {"text": "a"}), EventInput("note", {"text": "b"})]
    )
    assert [e.seq for e in events] == [1, 2]
    assert selectors.context_snapshot(session=session)["last_seq"] == 2
