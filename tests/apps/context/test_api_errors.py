"""Every bad request gets a 4xx {code, message, details}; none gets a 500."""

from __future__ import annotations

import pytest
from django.test import override_settings

from apps.context.models import ContextEvent, Session
from tests.apps.context.conftest import url
from tests.apps.context.test_api_sessions import assert_error

pytestmark = pytest.mark.django_db


def raw(client, path, body: bytes | str, content_type: str = "application/json", method: str = "post"):
    return getattr(client, method)(path, data=body, content_type=content_type)


def test_unknown_api_url_is_a_json_404(api_client):
    body = assert_error(api_client.get("/api/v1/nothing-here/"), 404, "not_found")
    assert body["details"]["path"] == "/api/v1/nothing-here/"
    assert_error(api_client.post("/api/v2/sessions/", {}), 404, "not_found")
    hint = assert_error(api_client.get("/api/v1/sessions"), 404)
    assert "hint" in hint["details"]
    assert_error(api_client.get("/api/v1/sessions/not-a-uuid/"), 404)


def test_wrong_method_is_405(api_client, session_factory):
    assert_error(api_client.put("/api/v1/sessions/", {}), 405, "method_not_allowed")
    assert_error(api_client.post(url(session_factory(), "context/"), {}), 405, "method_not_allowed")


def test_non_json_body_is_415(api_client):
    assert_error(
        raw(api_client, "/api/v1/sessions/", "title=x", "application/x-www-form-urlencoded"),
        415,
        "unsupported_media_type",
    )
    assert Session.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"title": NaN}',
        b"\xff\xfe",
        b"[" * 100_000,
        b'{"title": "a\\u0000b"}',
        b'{"title": "ok", "metadata": {"k": "\\ud800"}}',
        b'{"title": "ok", "metadata": {"a\\u0000": 1}}',
        b'{"title": "ok", "metadata": {"x": 1e400}}',
    ],
)
def test_malformed_or_unstorable_json_is_400(api_client, body):
    assert_error(raw(api_client, "/api/v1/sessions/", body), 400, "malformed_request")
    assert Session.objects.count() == 0


def test_deep_but_parseable_json_is_400(roles):
    r = roles()
    nested: dict = {}
    cursor = nested
    for _ in range(100):
        cursor["a"] = {}
        cursor = cursor["a"]
    assert_error(
        r["clients"]["owner"].post(url(r["session"], "events/"), {"event_type": "note", "data": nested}, format="json"),
        400,
        "malformed_request",
    )
    assert ContextEvent.objects.count() == 0


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_oversized_body_is_413(roles):
    r = roles()
    body = {"event_type": "note", "data": {"t": "x" * 2000}}
    assert_error(
        r["clients"]["owner"].post(url(r["session"], "events/"), body, format="json"), 413, "payload_too_large"
    )
    assert ContextEvent.objects.count() == 0


def test_wrong_types_are_400(api_client, session_factory):
    session = session_factory()
    assert_error(api_client.post("/api/v1/sessions/", {"title": ["x"]}, format="json"), 400, "invalid")
    assert_error(api_client.post(url(session, "participants/"), {"username": 7, "role": True}, format="json"), 400)
    assert_error(api_client.patch(url(session), {"state": 1}, format="json"), 400)
    assert_error(api_client.get("/api/v1/sessions/?search=%00"), 400)
    assert_error(api_client.delete(url(session, "participants/a%00b/")), 404)
