"""Revocation reaches open sockets, by every path, on the real web process.

A participant removed (REST, admin), a user deactivated, a token deleted: the
server closes the victim's open WebSocket with the documented code within a
bounded time (measured, printed with ``-s``), the socket gets no event
written after the revocation, and reconnecting (to ``resume`` or write) is
refused. Other users' sockets stay open and keep receiving.
"""

from __future__ import annotations

import asyncio
import re
import time
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.security.conftest import WS, auth

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# The bound the tests hold the server to (the push normally lands in milliseconds;
# PRESENCE_HEARTBEAT_S, 10 s, is the bound when a push is lost).
CLOSE_WITHIN_S = 3.0


async def _close_after(ws: WS, started: float, timeout: float = CLOSE_WITHIN_S) -> tuple[int | None, float, list]:
    """(close code or None if still open after ``timeout``, seconds from ``started``, frames seen meanwhile)."""
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None, time.monotonic() - started, seen
            seen.append(await ws.recv(timeout=remaining))
    except TimeoutError:
        return None, time.monotonic() - started, seen
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), time.monotonic() - started, seen


async def _refused_code(url: str) -> int | None:
    """Connect again: the close code the server answers with (None if it sends a hello)."""
    try:
        ws = await WS.open(url)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except AssertionError:
        return None
    await ws.close()
    return None


def _rest_append(web, team, who: str, text: str) -> None:
    response = httpx.post(
        f"{web.http}/api/v1/sessions/{team['sid']}/events/",
        json={"event_type": "note", "data": {"text": text}},
        headers=auth(team["tokens"][who]),
        timeout=10,
    )
    assert response.status_code == 201, response.text


def _assert_revoked(code, elapsed, seen, *, expected: int, label: str) -> None:
    print(f"\nrevocation close latency [{label}]: {elapsed * 1000:.0f} ms (code {code})")
    assert code == expected, (label, code, f"still open after {elapsed:.1f}s" if code is None else "", seen[-3:])
    assert elapsed < CLOSE_WITHIN_S
    assert not [f for f in seen if f.get("type") == "event" and f["data"].get("text") == "after"], seen


async def _orm(fn) -> None:
    """Run an ORM write on a thread (as admin or manage.py would), closing that thread's connection."""

    def run() -> None:
        from django.db import connection

        try:
            fn()
        finally:
            connection.close()

    await asyncio.to_thread(run)


async def _victim_and_witness(web, team, victim: str = "bob") -> tuple[WS, WS]:
    victim_ws = await WS.open(web.ws_url(team["sid"], team["tokens"][victim]))
    witness = await WS.open(web.ws_url(team["sid"], team["tokens"]["alice"]))
    return victim_ws, witness


def test_participant_removed_through_rest_is_closed_4404_and_cannot_come_back(web, team):
    async def scenario() -> None:
        bob, alice = await _victim_and_witness(web, team)
        started = time.monotonic()
        response = await asyncio.to_thread(
            httpx.delete,
            f"{web.http}/api/v1/sessions/{team['sid']}/participants/bob/",
            headers=auth(team["tokens"]["alice"]),
            timeout=10,
        )
        assert response.status_code == 204, response.text
        await asyncio.to_thread(_rest_append, web, team, "alice", "after")
        code, elapsed, seen = await _close_after(bob, started)
        _assert_revoked(code, elapsed, seen, expected=4404, label="participant removed (REST)")
        assert await _refused_code(web.ws_url(team["sid"], team["tokens"]["bob"])) == 4404
        # The owner's socket is untouched and gets the event.
        event = await alice.recv_type("event")
        assert event["data"] == {"text": "after"}
        await alice.close()

    asyncio.run(scenario())


def _admin_client(web, make_user) -> httpx.Client:
    make_user("root", staff=True, password="pw-Root-123")
    client = httpx.Client(base_url=web.http, timeout=10, follow_redirects=False)
    page = client.get("/admin/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    login = client.post(
        "/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": csrf, "username": "root", "password": "pw-Root-123", "next": "/admin/"},
        headers={"Referer": f"{web.http}/admin/login/"},
    )
    assert login.status_code == 302, login.text[:500]
    return client


def _admin_post(client: httpx.Client, web, path: str, data: dict[str, str]) -> httpx.Response:
    page = client.get(path)
    assert page.status_code == 200, page.text[:300]
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return client.post(path, data={"csrfmiddlewaretoken": csrf, **data}, headers={"Referer": f"{web.http}{path}"})


def test_participant_deleted_in_admin_is_closed_4404(web, team, make_user):
    from apps.context.models import Participant

    admin = _admin_client(web, make_user)
    participant = Participant.objects.get(session=team["session"], user=team["users"]["bob"])

    async def scenario() -> None:
        bob, alice = await _victim_and_witness(web, team)
        started = time.monotonic()
        response = await asyncio.to_thread(
            _admin_post, admin, web, f"/admin/context/participant/{participant.pk}/delete/", {"post": "yes"}
        )
        assert response.status_code == 302, response.text[:300]
        await asyncio.to_thread(_rest_append, web, team, "alice", "after")
        code, elapsed, seen = await _close_after(bob, started)
        _assert_revoked(code, elapsed, seen, expected=4404, label="participant deleted (admin)")
        assert await _refused_code(web.ws_url(team["sid"], team["tokens"]["bob"])) == 4404
        await alice.close()

    asyncio.run(scenario())


def test_deactivated_user_is_closed_4401(web, team):
    async def scenario() -> None:
        bob, alice = await _victim_and_witness(web, team)
        started = time.monotonic()

        def deactivate() -> None:
            user = team["users"]["bob"]
            user.is_active = False
            user.save()

        await _orm(deactivate)
        await asyncio.to_thread(_rest_append, web, team, "alice", "after")
        code, elapsed, seen = await _close_after(bob, started)
        _assert_revoked(code, elapsed, seen, expected=4401, label="user deactivated")
        assert await _refused_code(web.ws_url(team["sid"], team["tokens"]["bob"])) == 4401
        await alice.close()

    asyncio.run(scenario())


def test_deleted_token_is_closed_4401_and_the_users_other_token_is_not(web, team):
    from rest_framework.authtoken.models import Token

    async def scenario() -> None:
        bob, alice = await _victim_and_witness(web, team)
        started = time.monotonic()
        await _orm(lambda: Token.objects.filter(user=team["users"]["bob"]).delete())
        await asyncio.to_thread(_rest_append, web, team, "alice", "after")
        code, elapsed, seen = await _close_after(bob, started)
        _assert_revoked(code, elapsed, seen, expected=4401, label="token deleted")
        assert await _refused_code(web.ws_url(team["sid"], team["tokens"]["bob"])) == 4401
        # alice (another user, another token) keeps her socket and her events.
        assert (await alice.recv_type("event"))["data"] == {"text": "after"}
        await alice.close()

    asyncio.run(scenario())


def test_session_deleted_tells_every_socket_and_closes_4404(web, team):
    async def scenario() -> None:
        bob, alice = await _victim_and_witness(web, team)
        started = time.monotonic()
        response = await asyncio.to_thread(
            httpx.delete,
            f"{web.http}/api/v1/sessions/{team['sid']}/",
            headers=auth(team["tokens"]["alice"]),
            timeout=10,
        )
        assert response.status_code == 204
        for ws, label in ((bob, "bob"), (alice, "alice")):
            code, elapsed, seen = await _close_after(ws, started)
            print(f"\nsession deleted -> close [{label}]: {elapsed * 1000:.0f} ms (code {code})")
            assert code == 4404, (label, code, seen[-3:])
            assert {"type": "session", "event": "deleted", "session": {"id": team["sid"]}} in seen, seen

    asyncio.run(scenario())


def test_session_renamed_and_closed_are_told_live(web, team):
    async def session_frame(ws: WS) -> dict[str, Any] | None:
        code, _, seen = await _close_after(ws, time.monotonic(), timeout=5)
        assert code is None, code
        return next((f for f in seen if f.get("type") == "session"), None)

    async def scenario() -> None:
        bob = await WS.open(web.ws_url(team["sid"], team["tokens"]["bob"]))
        for change, event in (({"title": "Renamed"}, "updated"), ({"state": "closed"}, "closed")):
            response = await asyncio.to_thread(
                httpx.patch,
                f"{web.http}/api/v1/sessions/{team['sid']}/",
                json=change,
                headers=auth(team["tokens"]["alice"]),
                timeout=10,
            )
            assert response.status_code == 200
            frame = await session_frame(bob)
            assert frame is not None, f"no session frame after {change}"
            assert frame["event"] == event, frame
            assert frame["session"] == {"id": team["sid"], "title": "Renamed", "state": response.json()["state"]}
        await bob.close()

    asyncio.run(scenario())


def test_token_deleted_in_admin_closes_the_socket_and_the_cached_token_is_refused_at_once(web, team, make_user):
    admin = _admin_client(web, make_user)
    bob_id = team["users"]["bob"].pk
    key = team["tokens"]["bob"]
    assert httpx.get(f"{web.http}/api/v1/sessions/", headers=auth(key), timeout=10).status_code == 200  # cached

    async def scenario() -> None:
        bob = await WS.open(web.ws_url(team["sid"], key))
        started = time.monotonic()
        response = await asyncio.to_thread(
            _admin_post, admin, web, f"/admin/authtoken/tokenproxy/{bob_id}/delete/", {"post": "yes"}
        )
        assert response.status_code == 302, response.text[:300]
        code, elapsed, seen = await _close_after(bob, started)
        _assert_revoked(code, elapsed, seen, expected=4401, label="token deleted (admin)")

    asyncio.run(scenario())
    assert httpx.get(f"{web.http}/api/v1/sessions/", headers=auth(key), timeout=10).status_code == 401


def test_a_lost_revocation_push_is_caught_by_the_heartbeat_recheck(start_web, team, monkeypatch):
    import importlib

    from rest_framework.authtoken.models import Token

    heartbeat_s = 1.0
    web = start_web(PRESENCE_HEARTBEAT_S=str(heartbeat_s))
    # The push from this process is lost (as in a Redis blip); the cache invalidation is not.
    # (Before issue 13 there was no push to silence, and no module: the socket simply stayed open.)
    try:
        revocation = importlib.import_module("apps.realtime.revocation")
    except ImportError:
        revocation = None
    if revocation is not None:
        monkeypatch.setattr(revocation, "access_revoke", lambda **kwargs: None)

    async def scenario() -> None:
        bob = await WS.open(web.ws_url(team["sid"], team["tokens"]["bob"]))
        started = time.monotonic()
        await _orm(lambda: Token.objects.filter(user=team["users"]["bob"]).delete())
        code, elapsed, seen = await _close_after(bob, started, timeout=3 * heartbeat_s + 2)
        print(f"\nlost push -> heartbeat re-check close: {elapsed * 1000:.0f} ms (code {code})")
        assert code == 4401, (code, seen[-3:])
        assert elapsed < 2 * heartbeat_s + 1

    asyncio.run(scenario())


class _FormFields(HTMLParser):
    """The fields a browser would submit from the admin's change form (inputs, selects, textareas)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        name = a.get("name")
        if tag == "input" and name and a.get("type") not in ("submit", "button", "file"):
            if a.get("type") in ("checkbox", "radio"):
                if "checked" in a:
                    self.fields[name] = a.get("value") or "on"
            else:
                self.fields[name] = a.get("value", "")
        elif tag == "select" and name:
            self._select = name
            self.fields.setdefault(name, "")
        elif tag == "option" and self._select and "selected" in a:
            self.fields[self._select] = a.get("value", "")
        elif tag == "textarea" and name:
            self._textarea = name
            self.fields[name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.fields[self._textarea] += data


def test_a_session_renamed_and_closed_in_admin_is_told_live(web, team, make_user):
    import html

    admin = _admin_client(web, make_user)
    path = f"/admin/context/session/{team['sid']}/change/"

    def edit(**changes: str) -> int:
        parser = _FormFields()
        parser.feed(admin.get(path).text)
        fields = {k: html.unescape(v) for k, v in parser.fields.items()}
        fields.update(changes, _save="Save")
        return admin.post(path, data=fields, headers={"Referer": f"{web.http}{path}"}).status_code

    async def scenario() -> None:
        bob = await WS.open(web.ws_url(team["sid"], team["tokens"]["bob"]))
        for change, event in (({"title": "Renamed in admin"}, "updated"), ({"state": "closed"}, "closed")):
            assert await asyncio.to_thread(edit, **change) == 302
            code, _, seen = await _close_after(bob, time.monotonic(), timeout=3)
            frames = [f for f in seen if f.get("type") == "session"]
            assert code is None and frames, (change, code, seen[-3:])
            assert frames[0]["event"] == event and frames[0]["session"]["title"] == "Renamed in admin", frames
        await bob.close()

    asyncio.run(scenario())
    from apps.eventbus.models import OutboxMessage

    # The admin's close is a close like any other: its domain event is written.
    assert OutboxMessage.objects.filter(routing_key="session.closed").exists()
