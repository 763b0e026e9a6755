"""Event append (single, batch, idempotent) and ordered replay over REST."""

from __future__ import annotations

import pytest
from django.test import override_settings

from apps.context.models import ContextEvent, IdempotencyKey
from tests.apps.context.conftest import url
from tests.apps.context.test_api_sessions import assert_error

pytestmark = pytest.mark.django_db


def post(client, session, body, **headers):
    return client.post(url(session, "events/"), body, format="json", headers=headers or None)


def test_single_append_returns_the_stored_event(roles):
    r = roles()
    response = post(r["clients"]["editor"], r["session"], {"event_type": "context_update", "data": {"text": "hi"}})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["seq"] == 1 and body["event_type"] == "context_update" and body["data"] == {"text": "hi"}
    assert body["user"] == r["users"]["editor"].username and body["client_msg_id"] is None


def test_batch_append_answers_events_in_order(roles):
    r = roles()
    events = [{"event_type": "note", "data": {"i": i}, "client_msg_id": f"m{i}"} for i in range(5)]
    response = post(r["clients"]["owner"], r["session"], {"events": events})
    assert response.status_code == 201
    assert [e["seq"] for e in response.json()["events"]] == [1, 2, 3, 4, 5]
    assert [e["data"]["i"] for e in response.json()["events"]] == list(range(5))


def test_repeated_client_msg_id_returns_the_stored_event(roles):
    r = roles()
    c, s = r["clients"]["owner"], r["session"]
    first = post(c, s, {"event_type": "note", "data": {"v": 1}, "client_msg_id": "abc"}).json()
    again = post(c, s, {"event_type": "note", "data": {"v": 1}, "client_msg_id": "abc"}).json()
    assert again == first
    assert ContextEvent.objects.filter(session=s).count() == 1


@pytest.mark.parametrize(
    "body, code",
    [
        ({"event_type": "shout", "data": {}}, "invalid"),
        ({"event_type": "note", "data": []}, "invalid"),
        ({"event_type": "note", "data": {}, "extra": 1}, "invalid"),
        ({"data": {}}, "invalid"),
        ({"event_type": "note", "client_msg_id": "x" * 65}, "invalid"),
        ({"events": []}, "invalid"),
        ({"events": "nope"}, "invalid"),
        ({"events": [{"event_type": "note"}], "also": 1}, "invalid"),
        ([{"event_type": "note"}], "invalid"),
        ({"events": [{"event_type": "note"}, {"event_type": "note", "data": 3}]}, "invalid"),
        (
            {"events": [{"event_type": "note", "client_msg_id": "a"}, {"event_type": "note", "client_msg_id": "a"}]},
            "invalid",
        ),
    ],
)
def test_bad_events_get_400_and_nothing_is_written(roles, body, code):
    r = roles()
    assert_error(post(r["clients"]["owner"], r["session"], body), 400, code)
    assert ContextEvent.objects.count() == 0
    r["session"].refresh_from_db()
    assert r["session"].last_seq == 0


def test_a_bad_event_in_a_batch_names_its_index(roles):
    r = roles()
    body = assert_error(
        post(r["clients"]["owner"], r["session"], {"events": [{"event_type": "note"}, {"event_type": "bad"}]}), 400
    )
    assert "1" in body["details"]["events"]


@override_settings(EVENT_BATCH_MAX=3)
def test_batch_over_the_limit_is_refused(roles):
    r = roles()
    body = assert_error(
        post(r["clients"]["owner"], r["session"], {"events": [{"event_type": "note"}] * 4}), 400, "batch_too_large"
    )
    assert body["details"] == {"max": 3, "got": 4}
    assert ContextEvent.objects.count() == 0


@override_settings(EVENT_DATA_MAX_BYTES=100)
def test_oversized_event_data_is_refused(roles):
    r = roles()
    assert_error(
        post(r["clients"]["owner"], r["session"], {"event_type": "note", "data": {"t": "x" * 200}}),
        400,
        "event_too_large",
    )


def test_roles_for_append(roles):
    r = roles()
    s = r["session"]
    event = {"event_type": "note"}
    assert_error(post(r["clients"]["viewer"], s, event), 403, "permission_denied")
    assert_error(post(r["clients"]["outsider"], s, event), 404, "not_found")
    r["session"].state = "closed"
    r["session"].save()
    assert_error(post(r["clients"]["editor"], s, event), 409, "session_closed")
    assert ContextEvent.objects.count() == 0


def test_replay_after_seq_is_ordered_and_cursor_paginated(roles):
    r = roles()
    c, s = r["clients"]["owner"], r["session"]
    post(c, s, {"events": [{"event_type": "note", "data": {"i": i}} for i in range(1, 8)]})
    page = r["clients"]["viewer"].get(url(s, "events/?after_seq=2&limit=3")).json()
    assert [e["seq"] for e in page["results"]] == [3, 4, 5]
    assert "after_seq=5" in page["next"]
    last = r["clients"]["viewer"].get(page["next"]).json()
    assert [e["seq"] for e in last["results"]] == [6, 7] and last["next"] is None
    assert c.get(url(s, "events/?after_seq=7")).json() == {"results": [], "next": None}
    assert_error(c.get(url(s, "events/?after_seq=-1")), 400)
    assert_error(c.get(url(s, "events/?after_seq=99999999999999999999")), 400)
    assert_error(c.get(url(s, "events/?limit=0")), 400)
    assert_error(r["clients"]["outsider"].get(url(s, "events/")), 404)


# --- Idempotency-Key -----------------------------------------------------------


def test_idempotency_same_body_replays_and_writes_nothing(roles):
    r = roles()
    c, s = r["clients"]["owner"], r["session"]
    body = {"events": [{"event_type": "note", "data": {"i": 1}}, {"event_type": "note", "data": {"i": 2}}]}
    first = post(c, s, body, **{"Idempotency-Key": "k-1"})
    second = post(c, s, body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert ContextEvent.objects.filter(session=s).count() == 2
    s.refresh_from_db()
    assert s.last_seq == 2


def test_idempotency_other_body_gets_422(roles):
    r = roles()
    c, s = r["clients"]["owner"], r["session"]
    post(c, s, {"event_type": "note", "data": {"i": 1}}, **{"Idempotency-Key": "k-2"})
    assert_error(
        post(c, s, {"event_type": "note", "data": {"i": 2}}, **{"Idempotency-Key": "k-2"}),
        422,
        "idempotency_key_reused",
    )
    assert ContextEvent.objects.filter(session=s).count() == 1


def test_idempotency_key_in_progress_gets_409(roles):
    r = roles()
    c, s = r["clients"]["owner"], r["session"]
    body = {"event_type": "note", "data": {"i": 1}}
    # What a concurrent first request leaves behind while it works.
    from apps.context.idempotency import request_fingerprint

    IdempotencyKey.objects.create(
        user=r["users"]["owner"],
        key="k-3",
        scope=f"POST {url(s, 'events/')}",
        request_hash=request_fingerprint(scope=f"POST {url(s, 'events/')}", payload=body),
    )
    assert_error(post(c, s, body, **{"Idempotency-Key": "k-3"}), 409, "idempotency_key_in_progress")
    assert ContextEvent.objects.count() == 0


def test_idempotency_failed_first_attempt_frees_the_key(roles):
    r = roles()
    s = r["session"]
    body = {"event_type": "note"}
    assert_error(post(r["clients"]["viewer"], s, body, **{"Idempotency-Key": "k-4"}), 403)
    assert not IdempotencyKey.objects.filter(key="k-4").exists()


def test_idempotency_keys_are_per_user(roles):
    r = roles()
    s = r["session"]
    body = {"event_type": "note"}
    post(r["clients"]["owner"], s, body, **{"Idempotency-Key": "shared"})
    post(r["clients"]["editor"], s, body, **{"Idempotency-Key": "shared"})
    assert ContextEvent.objects.filter(session=s).count() == 2


def test_invalid_idempotency_key_is_refused(roles):
    r = roles()
    assert_error(
        post(r["clients"]["owner"], r["session"], {"event_type": "note"}, **{"Idempotency-Key": "x" * 256}),
        400,
        "invalid_idempotency_key",
    )
