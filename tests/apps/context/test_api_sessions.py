"""Sessions, participants, snapshot, preferences and auth over REST."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from apps.context.models import Participant, Session
from tests.apps.context.conftest import url

pytestmark = pytest.mark.django_db


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"code", "message", "details"}, body
    if code is not None:
        assert body["code"] == code, body
    return body


# --- auth ----------------------------------------------------------------------


def test_token_for_right_password_and_error_for_wrong(user):
    client = APIClient()
    ok = client.post("/api/v1/auth/token/", {"username": "alice", "password": "pw-Secret-123"}, format="json")
    assert ok.status_code == 200
    token = ok.json()["token"]
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/sessions/").status_code == 200

    bad = APIClient().post("/api/v1/auth/token/", {"username": "alice", "password": "nope"}, format="json")
    assert_error(bad, 400, "invalid_credentials")


def test_token_endpoint_ignores_a_stale_token_header(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    ok = client.post("/api/v1/auth/token/", {"username": "alice", "password": "pw-Secret-123"}, format="json")
    assert ok.status_code == 200


def test_anonymous_and_bad_token_get_401():
    assert_error(APIClient().get("/api/v1/sessions/"), 401, "not_authenticated")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token deadbeef")
    assert_error(client.get("/api/v1/sessions/"), 401, "authentication_failed")


# --- sessions ------------------------------------------------------------------


def test_create_session_makes_the_creator_owner(api_client, user):
    response = api_client.post("/api/v1/sessions/", {"title": "Plan", "metadata": {"app": "docs"}}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["title"] == "Plan" and body["state"] == "open" and body["owner"] == "alice"
    assert body["metadata"] == {"app": "docs"} and body["last_seq"] == 0
    uuid.UUID(body["id"])
    participant = Participant.objects.get(session_id=body["id"], user=user)
    assert participant.role == "owner"


@pytest.mark.parametrize(
    "payload, field",
    [
        ({}, "title"),
        ({"title": ""}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"title": 5, "metadata": []}, "metadata"),
        ({"title": "ok", "metadata": "text"}, "metadata"),
        ({"title": "ok", "owner": "bob"}, "owner"),
    ],
)
def test_create_session_rejects_bad_input_and_writes_nothing(api_client, payload, field):
    body = assert_error(api_client.post("/api/v1/sessions/", payload, format="json"), 400, "invalid")
    assert field in body["details"]
    assert Session.objects.count() == 0


def test_list_is_mine_only_paginated_and_filterable(api_client, session_factory, other_user):
    for i in range(3):
        session_factory(title=f"mine {i}")
    closed = session_factory(title="old one")
    Session.objects.filter(pk=closed.pk).update(state="closed")
    session_factory(owner=other_user, title="not mine")

    body = api_client.get("/api/v1/sessions/").json()
    assert body["count"] == 4 and {s["title"] for s in body["results"]} == {"mine 0", "mine 1", "mine 2", "old one"}
    page = api_client.get("/api/v1/sessions/?page_size=2").json()
    assert len(page["results"]) == 2 and page["next"]
    assert api_client.get(page["next"]).json()["results"][0]["title"] not in {s["title"] for s in page["results"]}
    assert [s["title"] for s in api_client.get("/api/v1/sessions/?state=closed").json()["results"]] == ["old one"]
    assert api_client.get("/api/v1/sessions/?search=MINE 1").json()["count"] == 1
    assert_error(api_client.get("/api/v1/sessions/?state=weird"), 400, "invalid")
    assert_error(api_client.get("/api/v1/sessions/?page=99"), 404, "not_found")


def test_session_detail_for_each_role_and_404_for_outsiders(roles):
    r = roles()
    for name in ("owner", "editor", "viewer"):
        assert r["clients"][name].get(url(r["session"])).status_code == 200
    assert_error(r["clients"]["outsider"].get(url(r["session"])), 404, "not_found")
    assert_error(r["clients"]["owner"].get(f"/api/v1/sessions/{uuid.uuid4()}/"), 404, "not_found")


def test_patch_rules_per_role(roles):
    r = roles()
    c, s = r["clients"], r["session"]
    assert c["editor"].patch(url(s), {"title": "Renamed"}, format="json").json()["title"] == "Renamed"
    assert_error(c["viewer"].patch(url(s), {"title": "No"}, format="json"), 403, "permission_denied")
    assert_error(c["editor"].patch(url(s), {"state": "closed"}, format="json"), 403, "permission_denied")
    assert_error(c["outsider"].patch(url(s), {"title": "No"}, format="json"), 404)
    assert_error(c["owner"].patch(url(s), {"colour": "red"}, format="json"), 400, "invalid")
    closed = c["owner"].patch(url(s), {"state": "closed"}, format="json").json()
    assert closed["state"] == "closed" and closed["closed_at"]
    s.refresh_from_db()
    assert s.title == "Renamed" and s.state == "closed"


def test_only_the_owner_deletes(roles):
    r = roles()
    c, s = r["clients"], r["session"]
    assert_error(c["editor"].delete(url(s)), 403)
    assert_error(c["outsider"].delete(url(s)), 404)
    assert c["owner"].delete(url(s)).status_code == 204
    assert not Session.objects.filter(pk=s.pk).exists()


# --- participants --------------------------------------------------------------


def test_participants_list_add_change_remove_and_leave(roles, make_user):
    r = roles()
    c, s, users = r["clients"], r["session"], r["users"]
    listed = c["viewer"].get(url(s, "participants/")).json()["results"]
    assert {p["username"]: p["role"] for p in listed} == {
        "alice": "owner",
        users["editor"].username: "editor",
        users["viewer"].username: "viewer",
    }
    carol = make_user("carol")
    added = c["owner"].post(url(s, "participants/"), {"username": "carol", "role": "viewer"}, format="json")
    assert added.status_code == 201 and added.json()["role"] == "viewer"
    assert (
        c["owner"].post(url(s, "participants/"), {"username": "carol", "role": "editor"}, format="json").json()["role"]
        == "editor"
    )
    assert_error(c["editor"].post(url(s, "participants/"), {"username": "carol", "role": "viewer"}, format="json"), 403)
    assert_error(c["owner"].post(url(s, "participants/"), {"username": "carol", "role": "owner"}, format="json"), 400)
    assert_error(c["owner"].post(url(s, "participants/"), {"username": "ghost", "role": "viewer"}, format="json"), 400)
    assert_error(c["outsider"].get(url(s, "participants/")), 404)

    # a participant leaves; only the owner removes someone else; the owner cannot leave
    assert_error(c["editor"].delete(url(s, f"participants/{users['viewer'].username}/")), 403)
    assert c["viewer"].delete(url(s, f"participants/{users['viewer'].username}/")).status_code == 204
    assert_error(c["viewer"].get(url(s)), 404)  # gone means gone
    assert c["owner"].delete(url(s, "participants/carol/")).status_code == 204
    assert_error(c["owner"].delete(url(s, "participants/alice/")), 409, "owner_cannot_leave")
    assert_error(c["owner"].delete(url(s, "participants/nobody/")), 404)
    assert Participant.objects.get(session=s, user=carol).left_at is not None


# --- snapshot and preferences --------------------------------------------------


def test_snapshot_has_state_people_and_recent_events(roles):
    r = roles()
    c, s = r["clients"], r["session"]
    c["editor"].post(url(s, "events/"), {"event_type": "context_update", "data": {"text": "hello"}}, format="json")
    snap = c["viewer"].get(url(s, "context/")).json()
    assert snap["session_id"] == str(s.pk) and snap["last_seq"] == 1 and snap["state"] == "open"
    assert len(snap["participants"]) == 3
    assert snap["recent_events"][0]["data"] == {"text": "hello"}
    assert_error(c["outsider"].get(url(s, "context/")), 404)


def test_preferences_get_defaults_and_put_replaces(api_client):
    defaults = api_client.get("/api/v1/preferences/").json()
    assert defaults["ai_enabled"] is True and defaults["suggestion_kinds"] == [] and defaults["data"] == {}
    put = api_client.put(
        "/api/v1/preferences/",
        {"ai_enabled": False, "suggestion_kinds": ["next_action"], "data": {"x": 1}},
        format="json",
    )
    assert put.status_code == 200 and put.json()["ai_enabled"] is False
    assert api_client.get("/api/v1/preferences/").json()["suggestion_kinds"] == ["next_action"]
    assert api_client.put("/api/v1/preferences/", {}, format="json").json()["ai_enabled"] is True
    assert_error(api_client.put("/api/v1/preferences/", {"ai_enabled": "maybe"}, format="json"), 400)
    assert_error(api_client.put("/api/v1/preferences/", {"theme": "dark"}, format="json"), 400)
