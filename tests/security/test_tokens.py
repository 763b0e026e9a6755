"""The token lifecycle on the real web process: expiry, rotation, revocation, and no token in any log line.

The server is the Procfile's web line with its access log on, its output
captured; manage.py commands run as their own processes, as an operator runs them.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from websockets.exceptions import ConnectionClosed

from tests.security.conftest import WS, auth
from tests.support.processes import REPO_ROOT, child_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _get_sessions(web, token: str) -> int:
    return httpx.get(f"{web.http}/api/v1/sessions/", headers=auth(token), timeout=10).status_code


async def _ws_outcome(url: str, **kwargs) -> str:
    """``"hello"`` if the server serves the socket, else ``"closed:<code>"``."""
    try:
        ws = await WS.open(url, **kwargs)
    except ConnectionClosed as closed:
        return f"closed:{closed.rcvd.code if closed.rcvd else None}"
    await ws.close()
    return "hello"


async def _closed_within(ws: WS, timeout: float) -> int | None:
    try:
        return await ws.closed_code(timeout=timeout)
    except TimeoutError:
        return None


def _manage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_query_string_token_is_in_no_log_line(web, team):
    key = team["tokens"]["bob"]

    async def scenario() -> None:
        assert await _ws_outcome(web.ws_url(team["sid"], key)) == "hello"
        assert await _ws_outcome(web.ws_url(team["sid"], "not-a-real-token-value")) == "closed:4401"

    asyncio.run(scenario())
    httpx.get(f"{web.http}/api/v1/sessions/?token={key}", headers=auth(key), timeout=10)
    log = web.log()
    # The requests were logged (the access log is on), with the token replaced.
    deadline = time.monotonic() + 10
    while "/ws/sessions/" not in log and time.monotonic() < deadline:
        log = web.log()
    assert "/ws/sessions/" in log, log[-2000:]
    assert key not in log, [line for line in log.splitlines() if key in line][:3]
    assert "not-a-real-token-value" not in log
    assert "token=[redacted]" in log


def test_the_authorization_header_authenticates_a_websocket(web, team):
    async def scenario() -> None:
        url = web.ws_url(team["sid"])
        assert await _ws_outcome(url, additional_headers=auth(team["tokens"]["bob"])) == "hello"
        assert await _ws_outcome(url, additional_headers=auth("bogus")) == "closed:4401"

    asyncio.run(scenario())


def test_an_expired_token_is_refused_on_rest_and_websocket_and_login_issues_a_new_one(web, team):
    key = team["tokens"]["bob"]
    Token.objects.filter(key=key).update(created=timezone.now() - timedelta(days=31))  # past the 30-day TTL
    assert _get_sessions(web, key) == 401

    async def scenario() -> None:
        assert await _ws_outcome(web.ws_url(team["sid"], key)) == "closed:4401"

    asyncio.run(scenario())
    login = httpx.post(
        f"{web.http}/api/v1/auth/token/", json={"username": "bob", "password": "pw-Secret-123"}, timeout=10
    )
    assert login.status_code == 200, login.text
    assert login.json()["token"] != key
    assert login.json()["expires_at"] is not None
    assert _get_sessions(web, login.json()["token"]) == 200


def test_an_open_socket_is_closed_when_its_token_expires(start_web, team):
    web = start_web(API_TOKEN_TTL_S="3")
    # A fresh token, valid for 3 s from now.
    Token.objects.filter(user=team["users"]["bob"]).delete()
    key = Token.objects.create(user=team["users"]["bob"]).key

    async def scenario() -> None:
        ws = await WS.open(web.ws_url(team["sid"], key))
        started = time.monotonic()
        code = await _closed_within(ws, timeout=8)
        print(f"\ntoken expiry -> close after {time.monotonic() - started:.2f}s (code {code})")
        assert code == 4401
        assert any(f.get("type") == "revoked" and f.get("reason") == "token_expired" for f in ws.frames), ws.frames

    asyncio.run(scenario())


def test_rotation_over_rest_revokes_the_old_key_everywhere(web, team):
    old = team["tokens"]["bob"]
    assert _get_sessions(web, old) == 200  # the old key is now cached

    async def scenario() -> None:
        ws = await WS.open(web.ws_url(team["sid"], old))
        response = await asyncio.to_thread(
            httpx.post, f"{web.http}/api/v1/auth/token/rotate/", headers=auth(old), timeout=10
        )
        assert response.status_code == 200, response.text
        new = response.json()["token"]
        assert new != old
        assert await _closed_within(ws, timeout=5) == 4401
        assert await _ws_outcome(web.ws_url(team["sid"], new)) == "hello"
        team["tokens"]["bob"] = new

    asyncio.run(scenario())
    assert _get_sessions(web, old) == 401
    assert _get_sessions(web, team["tokens"]["bob"]) == 200


def test_revocation_over_rest_ends_the_token(web, team):
    key = team["tokens"]["vera"]
    assert _get_sessions(web, key) == 200
    response = httpx.post(f"{web.http}/api/v1/auth/token/revoke/", headers=auth(key), timeout=10)
    assert response.status_code == 204, response.text
    assert _get_sessions(web, key) == 401


def test_manage_py_revoke_and_rotate_reach_a_running_server(web, team):
    key = team["tokens"]["bob"]
    assert _get_sessions(web, key) == 200  # cached in the server

    async def scenario() -> None:
        ws = await WS.open(web.ws_url(team["sid"], key))
        done = await asyncio.to_thread(_manage, "revoke_api_token", "bob")
        assert done.returncode == 0, done.stderr
        assert await _closed_within(ws, timeout=5) == 4401

    asyncio.run(scenario())
    assert _get_sessions(web, key) == 401
    rotated = _manage("rotate_api_token", "bob")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip().splitlines()[-1]
    assert _get_sessions(web, new) == 200
    again = _manage("rotate_api_token", "bob")
    assert _get_sessions(web, new) == 401
    assert _get_sessions(web, again.stdout.strip().splitlines()[-1]) == 200
