"""The round trips of one REST append, pinned (issue 17, the hot path).

One single-event ``POST .../events/`` with warm caches (token, participant),
outside any test transaction, as in production: every SQL statement through
Django's cursor (``connection.execute_wrapper``), the outbox's ``COPY`` (psycopg's
``Cursor.copy``, which Django's wrapper does not see) and every ``COMMIT``.
Before the hot-path work (``ac43c61``; this file run against that tree fails
with the counts in ``BEFORE``) the plain append took 5 statements and 1 commit
(``SELECT ... FOR UPDATE`` of the session, the participant, ``UPDATE`` of
``last_seq``, ``INSERT`` of the event, ``COPY`` of the outbox row), 6 with a
``client_msg_id`` (the dedupe lookup), and 12 and 2 commits with an
``Idempotency-Key`` (the advisory lock, the claim and its commit, the claim's
re-check, a savepoint around the service, the completion, the unlock). A
change that adds a round trip fails here; lower a pin when a change removes one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
import pytest
from django.db import connections

from apps.context import services
from apps.context.models import ContextEvent, IdempotencyKey
from apps.eventbus.models import OutboxMessage
from tests.apps.context.conftest import url

pytestmark = pytest.mark.django_db(transaction=True)

# (SQL statements including COPY, commits) per append, warm caches, no Redis outage.
PINNED = {
    "plain": (2, 1),  # the lock-check-insert statement, the outbox COPY; the commit
    "client_msg_id": (2, 1),  # the same: the unique index dedupes (ON CONFLICT DO NOTHING)
    "idempotency_key": (5, 1),  # + lock-and-claim (autocommitted), the completing UPDATE, the unlock
}
# What the code before the hot-path work took, measured by this test on that tree.
BEFORE = {"plain": (5, 1), "client_msg_id": (6, 1), "idempotency_key": (12, 2)}


@dataclass
class RoundTrips:
    statements: list[str] = field(default_factory=list)
    commits: int = 0

    @property
    def counts(self) -> tuple[int, int]:
        return len(self.statements), self.commits


@contextmanager
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    seen = RoundTrips()
    connection = connections["default"]
    original_copy, original_commit = psycopg.Cursor.copy, connection._commit

    def copy(cursor, statement, *args, **kwargs):
        seen.statements.append(str(statement))
        return original_copy(cursor, statement, *args, **kwargs)

    def commit(*args, **kwargs):
        seen.commits += 1
        return original_commit(*args, **kwargs)

    def wrapper(execute, sql, params, many, context):
        seen.statements.append(sql)
        return execute(sql, params, many, context)

    with monkeypatch.context() as m:
        m.setattr(psycopg.Cursor, "copy", copy)
        m.setattr(connection, "_commit", commit)
        with connection.execute_wrapper(wrapper):
            yield seen


def _append(client, session, scenario: str, n: int):
    body = {"event_type": "context_update", "data": {"text": f"line {n}"}}
    headers = {}
    if scenario == "client_msg_id":
        body["client_msg_id"] = f"m{n}"
    elif scenario == "idempotency_key":
        headers["Idempotency-Key"] = f"k{n}"
    response = client.post(url(session, "events/"), body, format="json", headers=headers or None)
    assert response.status_code == 201, response.content
    return response.json()


@pytest.mark.parametrize("scenario", list(PINNED))
def test_one_append_costs_its_pinned_round_trips(scenario, user, api_client_for, monkeypatch):
    session = services.session_create(owner=user, title="round trips")
    client = api_client_for(user)
    _append(client, session, scenario, 1)  # warms the token and participant caches
    with round_trips(monkeypatch) as seen:
        stored = _append(client, session, scenario, 2)
    assert stored["seq"] == 2
    assert seen.counts == PINNED[scenario], "\n".join(seen.statements)
    # And the pin is below what the code took before (the test would have failed there).
    assert seen.counts[0] < BEFORE[scenario][0]
    # Everything the statements promise is there: events, gap-free seq, one outbox row each, the key completed.
    assert list(ContextEvent.objects.filter(session=session).order_by("seq").values_list("seq", flat=True)) == [1, 2]
    assert OutboxMessage.objects.filter(routing_key="context.updated").count() == 2
    if scenario == "idempotency_key":
        assert set(IdempotencyKey.objects.values_list("status", flat=True)) == {IdempotencyKey.Status.COMPLETED}


def test_a_retried_client_msg_id_in_a_batch_is_answered_stored_and_leaves_no_seq_hole(user, api_client_for):
    """The statement skips the stored event, is undone, and only the new events get seqs (contiguous)."""
    session = services.session_create(owner=user, title="retry")
    client = api_client_for(user)
    first = _append(client, session, "client_msg_id", 1)
    events = [
        {"event_type": "note", "data": {"i": 0}, "client_msg_id": "new-a"},
        {"event_type": "context_update", "data": {"text": "line 1"}, "client_msg_id": "m1"},
        {"event_type": "note", "data": {"i": 2}, "client_msg_id": "new-b"},
    ]
    response = client.post(url(session, "events/"), {"events": events}, format="json")
    assert response.status_code == 201, response.content
    answered = response.json()["events"]
    assert [e["seq"] for e in answered] == [2, first["seq"], 3]
    assert answered[1] == first
    assert list(ContextEvent.objects.filter(session=session).order_by("seq").values_list("seq", flat=True)) == [1, 2, 3]
    session.refresh_from_db()
    assert session.last_seq == 3
    assert OutboxMessage.objects.filter(routing_key="context.updated").count() == 3


def test_a_refused_append_writes_nothing_and_costs_one_more_statement(user, make_user, api_client_for, monkeypatch):
    """A viewer's append: the statement matches nothing, one read says why (403), nothing is stored."""
    session = services.session_create(owner=user, title="refused")
    viewer = make_user("viewer_rt")
    services.participant_add(session=session, actor=user, username=viewer.username, role="viewer")
    client = api_client_for(viewer)
    client.get(url(session))  # warms the caches
    with round_trips(monkeypatch) as seen:
        response = client.post(url(session, "events/"), {"event_type": "note", "data": {}}, format="json")
    assert response.status_code == 403, response.content
    assert len(seen.statements) == 2, seen.statements
    assert not ContextEvent.objects.filter(session=session).exists()
    assert OutboxMessage.objects.filter(routing_key="context.updated").count() == 0
