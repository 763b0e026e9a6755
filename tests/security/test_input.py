"""Hostile input against the real web process (the Procfile's line, real PostgreSQL and Redis).

Each test sends what an attacker would send and checks the refusal (status or
frame, the platform's error shape) and that nothing changed: no row written,
no server error in the log, the socket still open.
"""

from __future__ import annotations

import bz2
import codecs
import json
import zlib

import httpx
import pytest

from apps.context.models import ContextEvent
from tests.security.conftest import auth, server_errors

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ERROR_KEYS = {"code", "message", "details"}


def _codec_bodies() -> dict[str, bytes]:
    """The same small JSON body encoded with codecs that are not UTF-8 (some not text codecs at all)."""
    body = json.dumps({"username": "alice", "password": "pw-Secret-123"}).encode()
    return {
        "bz2": bz2.compress(body),
        "zlib": zlib.compress(body),
        "rot13": codecs.encode(body.decode(), "rot13").encode(),
        "latin-1": body,
        "utf-16": body.decode().encode("utf-16"),
        "base64": codecs.encode(body, "base64"),
        "no-such-codec": body,
    }


@pytest.mark.parametrize("charset", list(_codec_bodies()))
def test_token_endpoint_refuses_every_charset_but_utf8_with_415(web, team, charset):
    body = _codec_bodies()[charset]
    response = httpx.post(
        f"{web.http}/api/v1/auth/token/",
        content=body,
        headers={"Content-Type": f"application/json; charset={charset}"},
        timeout=10,
    )
    assert response.status_code == 415, (charset, response.status_code, response.text[:300])
    assert set(response.json()) == ERROR_KEYS
    assert response.json()["code"] == "unsupported_media_type"
    assert "token" not in response.json()
    assert server_errors(web) == []


def test_a_decompression_bomb_is_never_decoded(web, team):
    # 200 MB of zeros compress to about 150 bytes; decoding would allocate it all.
    bomb = bz2.compress(b"0" * 200_000_000)
    assert len(bomb) < 1000
    response = httpx.post(
        f"{web.http}/api/v1/sessions/{team['sid']}/events/",
        content=bomb,
        headers={"Content-Type": "application/json; charset=bz2", **auth(team["tokens"]["alice"])},
        timeout=30,
    )
    assert response.status_code == 415, response.text[:300]
    assert response.json()["code"] == "unsupported_media_type"
    assert ContextEvent.objects.count() == 0
    assert server_errors(web) == []


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", "utf8"])
def test_utf8_spelled_any_way_is_accepted(web, team, charset):
    body = json.dumps({"event_type": "note", "data": {"text": "café ☕"}}).encode()
    response = httpx.post(
        f"{web.http}/api/v1/sessions/{team['sid']}/events/",
        content=body,
        headers={"Content-Type": f"application/json; charset={charset}", **auth(team["tokens"]["alice"])},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    assert response.json()["data"] == {"text": "café ☕"}


def test_invalid_utf8_is_a_400_not_a_500(web, team):
    response = httpx.post(
        f"{web.http}/api/v1/sessions/{team['sid']}/events/",
        content=b'{"event_type": "note", "data": {"text": "\xff\xfe"}}',
        headers={"Content-Type": "application/json", **auth(team["tokens"]["alice"])},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "malformed_request"
    assert ContextEvent.objects.count() == 0
    assert server_errors(web) == []
