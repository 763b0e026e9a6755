"""Resource bounds in bytes and per user, on the Procfile's web process.

- a page of ``GET .../events/`` stops before it passes ``EVENT_PAGE_MAX_BYTES``
  and says there is more (``next``), whatever ``limit`` asks; an event larger
  than the cap comes alone; following ``next`` reads every event once, in order;
- a WebSocket ``resume`` reads its pages within ``WS_REPLAY_PAGE_MAX_BYTES``
  and still delivers every event once, in order;
- a user may store at most ``EVENT_QUOTA_PER_USER`` events per rolling
  ``EVENT_QUOTA_WINDOW_S``: past it REST appends get 429 with ``Retry-After``
  and WebSocket appends an ``error`` ``rate_limited`` frame, and nothing is stored.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from apps.context.models import ContextEvent
from apps.context.services import EventInput, context_event_append
from tests.security.conftest import WS, auth

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PAGE_BYTES = 20_000
EVENT_TEXT = 5_000  # each event's data is about 5 KB: four fit a 20 KB page, not ten


def _append(team: dict[str, Any], texts: list[str]) -> None:
    context_event_append(
        session=team["session"],
        author=team["users"]["alice"],
        events=[EventInput(event_type="note", data={"text": text}) for text in texts],
    )


def test_event_pages_stop_at_their_byte_cap_and_say_there_is_more(start_web, team):
    # given ten events of 5 KB and a server whose pages hold 20 KB
    _append(team, [f"{i}:" + "x" * EVENT_TEXT for i in range(10)])
    web = start_web(EVENT_PAGE_MAX_BYTES=str(PAGE_BYTES))
    url = f"{web.http}/api/v1/sessions/{team['sid']}/events/?limit=100"

    # when a participant reads them page by page, asking for 100 a page
    pages: list[httpx.Response] = []
    while url:
        page = httpx.get(url, headers=auth(team["tokens"]["vera"]), timeout=30)
        assert page.status_code == 200, page.text
        pages.append(page)
        url = page.json()["next"]
        assert len(pages) <= 10, "the pages never end"

    # then no page passed the cap, the first said there was more, and every event came once, in order
    assert all(len(p.content) <= PAGE_BYTES for p in pages), [len(p.content) for p in pages]
    assert len(pages) >= 3 and pages[0].json()["next"] is not None
    seqs = [e["seq"] for p in pages for e in p.json()["results"]]
    assert seqs == list(range(1, 11))


def test_an_event_larger_than_the_page_cap_comes_alone(start_web, team):
    # given an event larger than the page cap between two small ones
    _append(team, ["small", "y" * (2 * PAGE_BYTES), "small again"])
    web = start_web(EVENT_PAGE_MAX_BYTES=str(PAGE_BYTES))
    base = f"{web.http}/api/v1/sessions/{team['sid']}/events/"

    # when the pages are read from the start and from after the first event
    first = httpx.get(f"{base}?limit=100", headers=auth(team["tokens"]["vera"]), timeout=30).json()
    big = httpx.get(f"{base}?after_seq=1&limit=100", headers=auth(team["tokens"]["vera"]), timeout=30).json()

    # then the big event is neither skipped nor joined by another: the reader moves on
    assert [e["seq"] for e in first["results"]] == [1] and first["next"]
    assert [e["seq"] for e in big["results"]] == [2] and big["next"]


def test_resume_replays_every_event_through_byte_capped_pages(start_web, team):
    # given 30 events of 5 KB, and a server whose replay pages hold 20 KB
    _append(team, [f"{i}:" + "r" * EVENT_TEXT for i in range(30)])
    web = start_web(WS_REPLAY_PAGE_MAX_BYTES=str(PAGE_BYTES))

    async def scenario() -> list[int]:
        ws = await WS.open(web.ws_url(team["sid"], team["tokens"]["vera"]))
        try:
            # when a client resumes from the start
            await ws.send({"type": "resume", "after_seq": 0})
            seqs: list[int] = []
            while len(seqs) < 30:
                seqs.append((await ws.recv_type("event"))["seq"])
            return seqs
        finally:
            await ws.close()

    # then it gets every event once, in order
    assert asyncio.run(scenario()) == list(range(1, 31))
    assert ContextEvent.objects.filter(session=team["session"]).count() == 30


QUOTA = 5


def test_a_user_over_the_stored_event_quota_is_refused_over_rest_and_websocket(start_web, team):
    # given a server that lets each user store 5 events a day, and bob, who stored 4 over REST
    web = start_web(EVENT_QUOTA_PER_USER=str(QUOTA))
    url = f"{web.http}/api/v1/sessions/{team['sid']}/events/"
    bob = auth(team["tokens"]["bob"])
    batch = {"events": [{"event_type": "note", "data": {"text": f"b{i}"}} for i in range(QUOTA - 1)]}
    assert httpx.post(url, json=batch, headers=bob, timeout=30).status_code == 201
    # (a resent client_msg_id stores nothing, so it costs nothing)
    once = {"event_type": "note", "data": {"text": "once"}, "client_msg_id": "m-1"}
    assert httpx.post(url, json=once, headers=bob, timeout=30).status_code == 201
    assert httpx.post(url, json=once, headers=bob, timeout=30).status_code == 201

    # when bob appends once more over REST, then over a WebSocket
    rest = httpx.post(url, json={"event_type": "note", "data": {"text": "one too many"}}, headers=bob, timeout=30)

    async def over_the_socket() -> dict[str, Any]:
        ws = await WS.open(web.ws_url(team["sid"], team["tokens"]["bob"]))
        try:
            await ws.send({"type": "context_update", "data": {"text": "ws too many"}, "client_msg_id": "ws-1"})
            while True:
                frame = await ws.recv(timeout=10)
                if frame["type"] in ("error", "ack"):
                    return frame
        finally:
            await ws.close()

    frame = asyncio.run(over_the_socket())

    # then REST says 429 with Retry-After, the socket gets a rate_limited error, and nothing was stored
    assert rest.status_code == 429, rest.text
    assert 1 <= int(rest.headers["Retry-After"]) <= 86_400
    assert rest.json()["code"] == "rate_limited"
    assert rest.json()["details"]["quota"] == "stored_events"
    assert frame["type"] == "error" and frame["code"] == "rate_limited", frame
    assert frame["client_msg_id"] == "ws-1" and frame["details"]["retry_after_ms"] >= 1000
    assert ContextEvent.objects.filter(session=team["session"], author=team["users"]["bob"]).count() == QUOTA

    # and another user's appends are not affected
    alice = auth(team["tokens"]["alice"])
    other = httpx.post(url, json={"event_type": "note", "data": {"text": "a"}}, headers=alice, timeout=30)
    assert other.status_code == 201, other.text
