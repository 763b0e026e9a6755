"""SessionConsumer through WebsocketCommunicator, on the real Redis channel layer.

Every frame type, every refusal and every limit; nothing here stubs the
channel layer, Redis or PostgreSQL.
"""

from __future__ import annotations

import json
import time
from unittest import mock

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings

from apps.context.hooks import hooks
from apps.context.models import Participant
from apps.context.services import participant_add
from apps.realtime import consumers, presence
from apps.realtime.broadcast import presence_set_ai_state, session_broadcast
from tests.apps.realtime.conftest import append_events, open_client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def room(session_factory, user, other_user, make_user, token_for):
    """A session owned by alice with bob as editor and carol as viewer."""
    session = session_factory()
    participant_add(session=session, actor=user, username=other_user.username, role=Participant.Role.EDITOR)
    carol = make_user("carol")
    participant_add(session=session, actor=user, username="carol", role=Participant.Role.VIEWER)
    return {
        "session": session,
        "sid": str(session.pk),
        "alice": user,
        "bob": other_user,
        "carol": carol,
        "alice_token": token_for(user),
        "bob_token": token_for(other_user),
        "carol_token": token_for(carol),
    }


# --- handshake ---------------------------------------------------------------


def test_hello_carries_last_seq_user_and_who_is_online(room):
    async def scenario():
        await append_events(room["session"], room["alice"], "one", "two")
        alice = await open_client(room["sid"], room["alice_token"])
        assert alice.hello["last_seq"] == 2
        assert alice.hello["user"] == {"username": "alice", "role": "owner"}
        assert alice.hello["session"]["id"] == room["sid"]
        assert alice.hello["online"] == [{"user": "alice", "state": "active"}]
        assert alice.hello["ai_state"] is None
        bob = await open_client(room["sid"], room["bob_token"])
        assert [u["user"] for u in bob.hello["online"]] == ["alice", "bob"]
        await alice.close()
        await bob.close()

    async_to_sync(scenario)()


def test_token_in_subprotocol_is_accepted_and_protocol_selected(room):
    async def scenario():
        client = await open_client(room["sid"], subprotocols=["context-engine", f"token.{room['bob_token']}"])
        assert client.subprotocol == "context-engine"
        assert client.hello["user"]["username"] == "bob"
        await client.close()

    async_to_sync(scenario)()


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("no_token", 4401),
        ("bad_token", 4401),
        ("bad_origin", 4403),
        ("not_participant", 4404),
        ("no_such_session", 4404),
        ("malformed_id", 4404),
        ("unknown_path", 4404),
    ],
)
def test_refusals_close_with_distinct_codes(room, make_user, token_for, case, code):
    outsider_token = token_for(make_user("mallory"))

    async def scenario():
        sid, token, kwargs = room["sid"], room["alice_token"], {}
        if case == "no_token":
            token = None
        elif case == "bad_token":
            token = "0" * 40
        elif case == "bad_origin":
            kwargs["origin"] = "https://evil.example"
        elif case == "not_participant":
            token = outsider_token
        elif case == "no_such_session":
            sid = "8d1c1a4e-55f5-4b7e-9c39-000000000000"
        elif case == "malformed_id":
            sid = "not-a-uuid"
        elif case == "unknown_path":
            kwargs["path"] = f"/ws/elsewhere/?token={token}"
        client = await open_client(sid, token, expect_hello=False, **kwargs)
        assert await client.closed_with() == code

    async_to_sync(scenario)()


def test_allowed_origin_is_admitted(room):
    async def scenario():
        client = await open_client(room["sid"], room["alice_token"], origin=settings.ALLOWED_ORIGINS[0])
        assert client.hello["type"] == "hello"
        await client.close()

    async_to_sync(scenario)()


def test_connections_per_user_are_capped(room, settings):
    settings.WS_MAX_CONNECTIONS_PER_USER = 2

    async def scenario():
        first = await open_client(room["sid"], room["alice_token"])
        second = await open_client(room["sid"], room["alice_token"])
        third = await open_client(room["sid"], room["alice_token"], expect_hello=False)
        assert await third.closed_with() == 4429
        await first.close()
        again = await open_client(room["sid"], room["alice_token"])
        assert again.hello["type"] == "hello"
        await second.close()
        await again.close()

    async_to_sync(scenario)()


# --- context_update, event, ack ---------------------------------------------------


def test_context_update_acks_sender_and_reaches_everyone(room):
    async def scenario():
        alice = await open_client(room["sid"], room["alice_token"])
        bob = await open_client(room["sid"], room["bob_token"])
        await alice.send({"type": "context_update", "data": {"text": "hi", "extra": [1]}, "client_msg_id": "m1"})
        mine = await alice.recv_type("event")
        ack = await alice.recv_type("ack")
        assert mine["seq"] == 1 and mine["data"] == {"text": "hi", "extra": [1]} and mine["user"] == "alice"
        assert ack == {"type": "ack", "client_msg_id": "m1", "seq": 1, "duplicate": False}
        theirs = await bob.recv_type("event")
        assert theirs["seq"] == 1 and theirs["client_msg_id"] == "m1" and theirs["event_type"] == "context_update"
        # A retry with the same client_msg_id is acked with the stored seq and not appended again.
        await alice.send({"type": "context_update", "data": {"text": "hi"}, "client_msg_id": "m1"})
        assert (await alice.recv_type("ack"))["duplicate"] is True
        assert await bob.nothing()
        # The sender never gets its own event twice (the live copy is dropped).
        assert await alice.nothing()
        await alice.close()
        await bob.close()

    async_to_sync(scenario)()


def test_events_appended_through_the_service_reach_clients_in_order(room):
    async def scenario():
        bob = await open_client(room["sid"], room["bob_token"])
        await append_events(room["session"], room["alice"], "a")
        await append_events(room["session"], room["alice"], "b", "c", "d")
        events = await bob.events(4)
        assert [e["seq"] for e in events] == [1, 2, 3, 4]
        assert [e["data"]["text"] for e in events] == ["a", "b", "c", "d"]
        await bob.close()

    async_to_sync(scenario)()


def test_viewer_update_gets_error_frame_and_stays_open(room):
    async def scenario():
        carol = await open_client(room["sid"], room["carol_token"])
        await carol.send({"type": "context_update", "data": {"text": "x"}, "client_msg_id": "c1"})
        error = await carol.recv_type("error")
        assert error["code"] == "permission_denied" and error["client_msg_id"] == "c1"
        await carol.send({"type": "ping", "t": 1})
        assert (await carol.recv_type("pong"))["t"] == 1
        await carol.close()

    async_to_sync(scenario)()


def test_closed_session_update_is_refused_with_error(room):
    from apps.context.services import session_close

    async def scenario():
        alice = await open_client(room["sid"], room["alice_token"])
        await database_sync_to_async(session_close)(session=room["session"], actor=room["alice"])
        await alice.send({"type": "context_update", "data": {"text": "late"}})
        assert (await alice.recv_type("error"))["code"] == "session_closed"
        await alice.close()

    async_to_sync(scenario)()


# --- ordering, gaps, resume ---------------------------------------------------------


def test_lost_broadcast_is_refilled_from_postgres_in_order(room):
    """A broadcast that never arrives leaves a hole; the next live event fills it."""

    async def scenario():
        bob = await open_client(room["sid"], room["bob_token"])
        with mock.patch.object(hooks, "events_appended", None):
            await append_events(room["session"], room["alice"], "lost-1", "lost-2")
        assert await bob.nothing()
        await append_events(room["session"], room["alice"], "live")
        events = await bob.events(3)
        assert [(e["seq"], e["data"]["text"]) for e in events] == [(1, "lost-1"), (2, "lost-2"), (3, "live")]
        assert await bob.nothing()
        await bob.close()

    async_to_sync(scenario)()


def test_hello_is_race_free_event_committed_during_handshake(room):
    """An event committed after subscribing but before last_seq is read is neither lost nor doubled."""
    real = consumers.last_seq_get

    async def append_then_read(**kwargs):
        await append_events(room["session"], room["alice"], "during-handshake")
        return await real(**kwargs)

    async def scenario():
        with mock.patch.object(consumers, "last_seq_get", append_then_read):
            bob = await open_client(room["sid"], room["bob_token"])
        assert bob.hello["last_seq"] == 1
        # Its live copy (seq 1 <= last_seq) is dropped; the next one arrives.
        await append_events(room["session"], room["alice"], "after")
        event = await bob.recv_type("event")
        assert event["seq"] == 2
        await bob.send({"type": "resume", "after_seq": 0})
        assert [e["seq"] for e in await bob.events(2)] == [1, 2]
        await bob.close()

    async_to_sync(scenario)()


def test_resume_replays_any_gap_in_order_then_continues_live(room, settings):
    settings.WS_REPLAY_PAGE = 7  # several pages

    async def scenario():
        await append_events(room["session"], room["alice"], *[f"e{i}" for i in range(1, 31)])
        bob = await open_client(room["sid"], room["bob_token"])
        assert bob.hello["last_seq"] == 30
        await bob.send({"type": "resume", "after_seq": 4})
        replayed = await bob.events(26)
        assert [e["seq"] for e in replayed] == list(range(5, 31))
        assert replayed[0]["data"] == {"text": "e5"}
        await append_events(room["session"], room["alice"], "live")
        assert (await bob.recv_type("event"))["seq"] == 31
        assert await bob.nothing()
        await bob.close()

    async_to_sync(scenario)()


def test_after_seq_on_the_handshake_replays_the_gap_before_any_live_event(room):
    """The reconnect path: (after_seq, last_seq] follows hello, then live events, each once and in order."""

    async def scenario():
        await append_events(room["session"], room["alice"], *[f"e{i}" for i in range(1, 11)])
        bob = await open_client(room["sid"], path=f"/ws/sessions/{room['sid']}/?token={room['bob_token']}&after_seq=6")
        assert bob.hello["last_seq"] == 10
        await append_events(room["session"], room["alice"], "live")
        seqs = [e["seq"] for e in await bob.events(5)]
        assert seqs == [7, 8, 9, 10, 11]
        assert await bob.nothing()
        await bob.close()

    async_to_sync(scenario)()


def test_a_bad_after_seq_on_the_handshake_is_an_error_and_the_socket_goes_on_live(room):
    async def scenario():
        await append_events(room["session"], room["alice"], "one", "two")
        for bad in ("-1", "x", "3.5", "99", "1" * 40):
            client = await open_client(
                room["sid"], path=f"/ws/sessions/{room['sid']}/?token={room['bob_token']}&after_seq={bad}"
            )
            assert (await client.recv_type("error"))["code"] == "invalid", bad
            assert await client.nothing()
            await client.close()

    async_to_sync(scenario)()


def test_a_replay_page_stops_before_its_byte_cap_and_the_next_one_goes_on(room, settings):
    # given 20 events of about 5 KB and replay pages of 500 events but 20 KB
    from apps.context.services import EventInput, context_event_append

    settings.WS_REPLAY_PAGE = 500
    settings.WS_REPLAY_PAGE_MAX_BYTES = 20_000
    context_event_append(
        session=room["session"],
        author=room["alice"],
        events=[EventInput(event_type="note", data={"text": f"{i}:" + "p" * 5_000}) for i in range(20)],
    )

    # when the consumer's page function reads the replay page by page
    pages: list[list[dict]] = []
    cursor = 0
    while cursor < 20:
        page = consumers._events_between(session=room["session"], after_seq=cursor, upto_seq=20, limit=500)
        assert page, "an empty page before the end"
        pages.append(page)
        cursor = page[-1]["seq"]

    # then each page held what fits in 20 KB (as frames), and together every event once, in order
    sizes = [sum(len(consumers._frame({"type": "event", **e})) for e in page) for page in pages]
    assert all(size <= 20_000 for size in sizes), sizes
    assert len(pages) >= 5
    assert [e["seq"] for page in pages for e in page] == list(range(1, 21))


def test_resume_beyond_the_limit_asks_for_resync(room, settings):
    settings.WS_RESUME_MAX_EVENTS = 5

    async def scenario():
        await append_events(room["session"], room["alice"], *[f"e{i}" for i in range(10)])
        bob = await open_client(room["sid"], room["bob_token"])
        await bob.send({"type": "resume", "after_seq": 2})
        frame = await bob.recv_type("resync_required")
        assert frame["last_seq"] == 10 and frame["max_events"] == 5
        await append_events(room["session"], room["alice"], "live")
        assert (await bob.recv_type("event"))["seq"] == 11
        await bob.close()

    async_to_sync(scenario)()


def test_resume_with_bad_after_seq_is_an_error(room):
    async def scenario():
        bob = await open_client(room["sid"], room["bob_token"])
        for bad in (-1, "3", True, None, 99):
            await bob.send({"type": "resume", "after_seq": bad})
            assert (await bob.recv_type("error"))["code"] == "invalid"
        await bob.close()

    async_to_sync(scenario)()


# --- ping, typing, presence, AI state, suggestions ----------------------------------


def test_ping_echoes_t(room):
    async def scenario():
        alice = await open_client(room["sid"], room["alice_token"])
        await alice.send({"type": "ping", "t": 123.5})
        pong = await alice.recv_type("pong")
        assert pong["t"] == 123.5 and pong["server_time"] > 0
        await alice.send({"type": "ping", "t": {"nested": 1}})
        assert (await alice.recv_type("error"))["code"] == "invalid"
        await alice.close()

    async_to_sync(scenario)()


def test_typing_reaches_others_and_expires(room, settings):
    settings.TYPING_TTL_S = 0.5

    async def scenario():
        alice = await open_client(room["sid"], room["alice_token"])
        bob = await open_client(room["sid"], room["bob_token"])
        await alice.send({"type": "typing"})
        frame = await bob.recv_type("typing")
        assert frame["user"] == "alice" and frame["active"] is True and frame["ttl_ms"] == 500
        assert await presence.typing_users(session_id=room["sid"]) == ["alice"]
        carol = await open_client(room["sid"], room["carol_token"])
        assert carol.hello["typing"] == ["alice"]
        time.sleep(0.6)
        assert await presence.typing_users(session_id=room["sid"]) == []
        await alice.send({"type": "typing", "active": False})
        assert (await bob.recv_type("typing"))["active"] is False
        # The typist does not get its own indicator back.
        assert not [f for f in alice.seen + alice.pending if f["type"] == "typing"]
        for client in (alice, bob, carol):
            await client.close()

    async_to_sync(scenario)()


def test_presence_join_state_and_leave_are_broadcast(room):
    async def scenario():
        alice = await open_client(room["sid"], room["alice_token"])
        bob = await open_client(room["sid"], room["bob_token"])
        joined = await alice.recv_type("presence", event="join", user="bob")
        assert [u["user"] for u in joined["online"]] == ["alice", "bob"]
        await bob.send({"type": "presence", "state": "away"})
        changed = await alice.recv_type("presence", event="state", user="bob")
        assert changed["state"] == "away"
        assert {"user": "bob", "state": "away"} in changed["online"]
        await bob.send({"type": "presence", "state": "asleep"})
        assert (await bob.recv_type("error"))["code"] == "invalid"
        await bob.close()
        left = await alice.recv_type("presence", event="leave", user="bob")
        assert left["online"] == [{"user": "alice", "state": "active"}]
        await alice.close()

    async_to_sync(scenario)()


def test_removed_participant_is_disconnected_and_others_are_told(room, make_user):
    from apps.context.services import participant_remove

    make_user("erin")

    async def scenario():
        alice = await open_client(room["sid"], room["alice_token"])
        bob = await open_client(room["sid"], room["bob_token"])
        await database_sync_to_async(participant_add)(
            session=room["session"], actor=room["alice"], username="erin", role=Participant.Role.VIEWER
        )
        added = await bob.recv_type("presence", event="added")
        assert added["user"] == "erin" and added["role"] == "viewer"
        await database_sync_to_async(participant_remove)(session=room["session"], actor=room["alice"], username="bob")
        assert (await alice.recv_type("presence", event="removed"))["user"] == "bob"
        assert await bob.closed_with() == 4404
        # Bob no longer gets the session's events.
        await append_events(room["session"], room["alice"], "private")
        assert (await alice.recv_type("event"))["seq"] == 1
        await alice.close()

    async_to_sync(scenario)()


def test_vanished_connection_is_swept_and_announced(room, settings):
    """A server process that died leaves an entry nobody refreshes; a live heartbeat sweeps it."""
    settings.PRESENCE_HEARTBEAT_S = 0.2
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.zadd(presence.presence_key(room["sid"]), {"specific.dead!conn": time.time() - 1})
    client.hset(presence.conns_key(room["sid"]), "specific.dead!conn", json.dumps({"user": "bob", "state": "active"}))
    client.close()

    async def scenario():
        alice = await open_client(room["sid"], room["alice_token"])
        assert alice.hello["online"] == [{"user": "alice", "state": "active"}]  # expired entries are not online
        left = await alice.recv_type("presence", event="leave", user="bob", timeout=10)
        assert left["online"] == [{"user": "alice", "state": "active"}]
        await alice.close()

    async_to_sync(scenario)()


def test_ai_state_is_broadcast_and_shown_in_hello(room):
    async def scenario():
        alice = await open_client(room["sid"], room["alice_token"])
        await database_sync_to_async(presence_set_ai_state)(session_id=room["sid"], state="generating")
        frame = await alice.recv_type("presence", event="ai_state")
        assert frame["ai_state"] == "generating"
        bob = await open_client(room["sid"], room["bob_token"])
        assert bob.hello["ai_state"] == "generating"
        await database_sync_to_async(presence_set_ai_state)(session_id=room["sid"], state=None)
        assert (await bob.recv_type("presence", event="ai_state"))["ai_state"] is None
        await alice.close()
        await bob.close()

    async_to_sync(scenario)()


def test_suggestion_broadcast_is_forwarded(room):
    async def scenario():
        alice = await open_client(room["sid"], room["alice_token"])
        suggestion = {"type": "suggestion", "suggestions": [{"id": "s1", "kind": "next_action", "content": "x"}]}
        await database_sync_to_async(session_broadcast)(session_id=room["sid"], message=suggestion)
        assert await alice.recv_type("suggestion") == suggestion
        await alice.close()

    async_to_sync(scenario)()


def test_broadcast_rejects_messages_without_type():
    with pytest.raises(ValueError):
        session_broadcast(session_id="x", message={"no": "type"})
    with pytest.raises(ValueError):
        presence_set_ai_state(session_id="x", state="dreaming")


# --- bad input and limits -------------------------------------------------------------


def test_bad_frames_get_error_frames_and_the_connection_stays_open(room):
    async def scenario():
        alice = await open_client(room["sid"], room["alice_token"])
        cases = [
            ("{not json", "malformed_json"),
            ("[1, 2]", "invalid_frame"),
            (json.dumps({"no": "type"}), "invalid_frame"),
            (json.dumps({"type": "launch_rockets"}), "unknown_type"),
            (json.dumps({"type": "context_update", "data": "text"}), "invalid"),
            (json.dumps({"type": "context_update", "data": {}, "client_msg_id": "x" * 65}), "invalid"),
            (json.dumps({"type": "context_update", "data": {}, "event_type": "hack"}), "invalid"),
            (json.dumps({"type": "typing", "active": "yes"}), "invalid"),
            ("x" * (settings.WS_MAX_FRAME_BYTES + 1), "frame_too_large"),
        ]
        for text, code in cases:
            await alice.send(text)
            error = await alice.recv_type("error")
            assert error["code"] == code, (text[:60], error)
            assert set(error) >= {"code", "message", "details"}
        await alice.comm.send_to(bytes_data=b"\x00\x01")
        assert (await alice.recv_type("error"))["code"] == "unsupported_frame"
        big = {"type": "context_update", "data": {"text": "y" * (settings.EVENT_DATA_MAX_BYTES + 10)}}
        await alice.send(big)
        assert (await alice.recv_type("error"))["code"] in ("event_too_large", "frame_too_large")
        await alice.send({"type": "ping", "t": "still-open"})
        assert (await alice.recv_type("pong"))["t"] == "still-open"
        assert await database_sync_to_async(lambda: room["session"].events.count())() == 0
        await alice.close()

    async_to_sync(scenario)()


def test_rate_limit_sends_error_then_closes_if_it_persists(room, settings):
    settings.WS_RATE_PER_SECOND = 1.0
    settings.WS_RATE_BURST = 3
    settings.WS_RATE_STRIKES = 4

    async def scenario():
        alice = await open_client(room["sid"], room["alice_token"])
        for i in range(3):
            await alice.send({"type": "ping", "t": i})
        assert [(await alice.recv_type("pong"))["t"] for _ in range(3)] == [0, 1, 2]
        await alice.send({"type": "ping", "t": 3})
        error = await alice.recv_type("error")
        assert error["code"] == "rate_limited" and error["details"]["retry_after_ms"] > 0
        for i in range(3):
            await alice.send({"type": "ping", "t": 10 + i})
        assert await alice.closed_with() == 4429

    async_to_sync(scenario)()


# --- recovery from a Redis that lost its state ---------------------------------------------


def test_connection_recovers_when_redis_loses_its_state(room, settings):
    """As after a Redis restart: presence (and, on the list layer, membership) gone, broadcasts lost.

    The heartbeat notices its entry is gone, re-registers, and catches up from PostgreSQL.
    """
    settings.PRESENCE_HEARTBEAT_S = 0.3

    async def scenario():
        bob = await open_client(room["sid"], room["bob_token"])
        client = redis.Redis.from_url(settings.REDIS_URL)
        client.delete(presence.presence_key(room["sid"]), presence.conns_key(room["sid"]))
        client.close()
        # The broadcasts of these two appends are lost, as during the outage.
        with mock.patch.object(hooks, "events_appended", None):
            await append_events(room["session"], room["alice"], "while-lost-1", "while-lost-2")
        events = await bob.events(2, timeout=10)
        assert [e["seq"] for e in events] == [1, 2]
        assert await presence.presence_online(session_id=room["sid"]) == [{"user": "bob", "state": "active"}]
        await append_events(room["session"], room["alice"], "live")
        assert (await bob.recv_type("event"))["seq"] == 3
        await bob.close()

    async_to_sync(scenario)()
