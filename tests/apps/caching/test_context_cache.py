"""The cached hot reads of the context API: fewer queries, and never a wrong answer."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.caching.cache import get_cache
from apps.context import services


@pytest.fixture(autouse=True)
def _cache_ready():
    cache = get_cache()
    assert cache.wait_ready(5)
    cache.local.clear()
    yield
    cache.local.clear()


def _context_queries(queries: list[dict]) -> list[str]:
    return [q["sql"] for q in queries if '"context_' in q["sql"]]


def _url(session, suffix: str = "") -> str:
    return f"/api/v1/sessions/{session.pk}/{suffix}"


def test_a_warm_snapshot_read_touches_no_context_table(api_client, session_factory):
    # given a session whose snapshot was read once
    session = session_factory()
    with CaptureQueriesContext(connection) as cold:
        assert api_client.get(_url(session, "context/")).status_code == 200
    assert len(_context_queries(cold.captured_queries)) >= 3  # participant, session, snapshot

    # when it is read again
    get_cache().local.clear()  # as in another web process: L1 cold, L2 warm
    with CaptureQueriesContext(connection) as from_l2:
        api_client.get(_url(session, "context/"))
    with CaptureQueriesContext(connection) as warm:
        response = api_client.get(_url(session, "context/"))

    # then session, participant and snapshot all come from the cache
    assert response.status_code == 200
    assert response.json()["title"] == "Design review"
    assert _context_queries(warm.captured_queries) == []
    assert _context_queries(from_l2.captured_queries) == []


def test_an_outsider_gets_404_before_and_after_it_is_cached_and_200_once_added(
    api_client, api_client_for, other_user, session_factory
):
    session = session_factory()
    bob = api_client_for(other_user)
    for _ in range(2):
        assert bob.get(_url(session, "context/")).status_code == 404
        assert bob.get(_url(session)).status_code == 404

    response = api_client.post(_url(session, "participants/"), {"username": other_user.username, "role": "viewer"})
    assert response.status_code == 201

    assert bob.get(_url(session)).status_code == 200
    snapshot = bob.get(_url(session, "context/")).json()
    assert {p["username"] for p in snapshot["participants"]} == {"alice", "bob"}


def test_a_removed_participant_loses_access_at_once(api_client, api_client_for, other_user, session_factory):
    session = session_factory()
    services.participant_add(session=session, actor=session.owner, username=other_user.username, role="editor")
    bob = api_client_for(other_user)
    assert bob.get(_url(session, "context/")).status_code == 200  # cached as a participant now

    assert api_client.delete(_url(session, f"participants/{other_user.username}/")).status_code == 204

    assert bob.get(_url(session, "context/")).status_code == 404
    assert bob.get(_url(session)).status_code == 404
    event = {"event_type": "context_update", "data": {"text": "x"}}
    assert bob.post(_url(session, "events/"), event).status_code == 404
    assert [p["username"] for p in api_client.get(_url(session, "context/")).json()["participants"]] == ["alice"]


def test_an_appended_event_shows_in_the_next_snapshot(api_client, session_factory):
    session = session_factory()
    assert api_client.get(_url(session, "context/")).json()["last_seq"] == 0

    response = api_client.post(_url(session, "events/"), {"event_type": "context_update", "data": {"text": "hi"}})
    assert response.status_code == 201

    snapshot = api_client.get(_url(session, "context/")).json()
    assert snapshot["last_seq"] == 1
    assert snapshot["recent_events"][-1]["data"] == {"text": "hi"}
    assert api_client.get(_url(session)).status_code == 200


def test_session_update_close_and_delete_are_seen_at_once(api_client, session_factory):
    session = session_factory()
    assert api_client.get(_url(session)).json()["title"] == "Design review"
    api_client.get(_url(session, "context/"))

    assert api_client.patch(_url(session), {"title": "Renamed"}).status_code == 200
    assert api_client.get(_url(session)).json()["title"] == "Renamed"
    assert api_client.get(_url(session, "context/")).json()["title"] == "Renamed"

    assert api_client.patch(_url(session), {"state": "closed"}).status_code == 200
    assert api_client.get(_url(session, "context/")).json()["state"] == "closed"

    assert api_client.delete(_url(session)).status_code == 204
    assert api_client.get(_url(session)).status_code == 404
    assert api_client.get(_url(session, "context/")).status_code == 404


def test_invalidation_runs_again_after_commit(session_factory, other_user, django_capture_on_commit_callbacks):
    session = session_factory()
    cache = get_cache()
    sent_before = cache.stats()["invalidations"]["sent"]
    with django_capture_on_commit_callbacks(execute=True):
        services.participant_add(session=session, actor=session.owner, username=other_user.username, role="viewer")
    # once inside the transaction and once after commit, for the tag and for the snapshot key
    assert cache.stats()["invalidations"]["sent"] - sent_before == 4
