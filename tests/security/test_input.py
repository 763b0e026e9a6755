"""Hostile input against the real web process (the Procfile's line, real PostgreSQL and Redis).

Each test sends what an attacker would send and checks the refusal (status or
frame, the platform's error shape) and that nothing changed: no row written,
no server error in the log, the socket still open.
"""

from __future__ import annotations

import asyncio
import bz2
import codecs
import json
import zlib

import httpx
import pytest
from django.db import connection
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect

from apps.context.models import ContextEvent
from tests.security.conftest import WS, auth, server_errors

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


# --- appends: one validator for REST and WebSocket ------------------------------

DEEP = 40  # past EVENT_DATA_MAX_DEPTH (32), below what the JSON parser itself refuses


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# Raw JSON texts of an event's ``data`` that must never be stored.
HOSTILE_DATA = {
    "nul_in_string": '{"text": "a\\u0000b"}',
    "nul_in_key": '{"a\\u0000": 1}',
    "lone_surrogate": '{"text": "\\ud800"}',
    "nan": '{"x": NaN}',
    "infinity": '{"x": -Infinity}',
    "overflow_to_inf": '{"x": 1e400}',
    "too_deep": _nested(DEEP),
    "far_too_deep": _nested(900),
    # 70 KB of UTF-8: over EVENT_DATA_MAX_BYTES (64 KiB), under the frame limit (96 KiB)
    "oversize": json.dumps({"text": "é" * 35_000}, ensure_ascii=False),
}


def _nothing_stored() -> None:
    from apps.eventbus.models import OutboxMessage

    assert ContextEvent.objects.count() == 0
    assert not OutboxMessage.objects.filter(routing_key__in=["context.updated", "user.action"]).exists()


async def _reply(ws: WS, timeout: float = 10) -> dict:
    """The next reply (presence and typing frames skipped), or ``{"type": "closed", "code": ...}``."""
    try:
        while True:
            frame = await ws.recv(timeout=timeout)
            if frame.get("type") not in ("presence", "typing"):
                return frame
    except ConnectionClosed as closed:
        return {"type": "closed", "code": closed.rcvd.code if closed.rcvd else None}


async def _still_open(ws: WS) -> None:
    await ws.send({"type": "ping", "t": "alive"})
    pong = await _reply(ws)
    assert pong.get("type") == "pong" and pong.get("t") == "alive", pong


@pytest.mark.parametrize("name", list(HOSTILE_DATA))
def test_rest_append_refuses_hostile_data_with_400(web, team, name):
    body = '{"event_type": "context_update", "data": ' + HOSTILE_DATA[name] + "}"
    response = httpx.post(
        f"{web.http}/api/v1/sessions/{team['sid']}/events/",
        content=body.encode("utf-8", "surrogatepass"),
        headers={"Content-Type": "application/json", **auth(team["tokens"]["alice"])},
        timeout=10,
    )
    assert response.status_code in (400, 413), (name, response.status_code, response.text[:300])
    assert set(response.json()) == ERROR_KEYS
    _nothing_stored()
    assert server_errors(web) == []


@pytest.mark.parametrize("name", list(HOSTILE_DATA))
def test_ws_append_refuses_hostile_data_with_an_error_frame_and_stays_open(web, team, name):
    frame = '{"type": "context_update", "client_msg_id": "m-1", "data": ' + HOSTILE_DATA[name] + "}"

    async def scenario() -> None:
        ws = await WS.open(web.ws_url(team["sid"], team["tokens"]["bob"]))
        await ws.send(frame)
        reply = await _reply(ws)
        assert reply.get("type") == "error", (name, reply)
        assert reply["code"] in ("invalid", "event_too_large", "malformed_json"), reply
        await _still_open(ws)
        await ws.close()

    asyncio.run(scenario())
    _nothing_stored()
    assert server_errors(web) == []


def test_ws_append_that_the_database_refuses_answers_an_error_frame_not_1011(web, team):
    # A real database failure on the insert (a trigger that raises), then the database heals.
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION ce_test_refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
            " LANGUAGE plpgsql;"
            " CREATE TRIGGER ce_test_refuse BEFORE INSERT ON context_contextevent"
            " FOR EACH ROW EXECUTE FUNCTION ce_test_refuse();"
        )

    async def scenario() -> None:
        ws = await WS.open(web.ws_url(team["sid"], team["tokens"]["bob"]))
        await ws.send({"type": "context_update", "client_msg_id": "m-1", "data": {"text": "x"}})
        reply = await _reply(ws)
        assert reply.get("type") == "error", reply
        assert reply["code"] == "server_error" and reply.get("client_msg_id") == "m-1", reply
        await _still_open(ws)
        await asyncio.to_thread(_drop_trigger)
        await ws.send({"type": "context_update", "client_msg_id": "m-1", "data": {"text": "x"}})
        event = await ws.recv_type("event")
        assert event["data"] == {"text": "x"}
        ack = await ws.recv_type("ack")
        assert ack["seq"] == 1 and ack["duplicate"] is False
        await ws.close()

    try:
        asyncio.run(scenario())
    finally:
        _drop_trigger()
    assert ContextEvent.objects.count() == 1


def _drop_trigger() -> None:
    from django.db import connections

    with connections["default"].cursor() as cursor:
        cursor.execute(
            "DROP TRIGGER IF EXISTS ce_test_refuse ON context_contextevent; DROP FUNCTION IF EXISTS ce_test_refuse();"
        )


# --- correlation ids: validated and bounded once ---------------------------------


def test_a_long_correlation_id_is_replaced_not_a_500(web, team):
    long_id = "c" * 100  # passed the old 128-character check, overflowed the 64-character outbox column
    response = httpx.post(
        f"{web.http}/api/v1/sessions/{team['sid']}/events/",
        json={"event_type": "note", "data": {"text": "hi"}},
        headers={"X-Correlation-ID": long_id, **auth(team["tokens"]["alice"])},
        timeout=10,
    )
    assert response.status_code == 201, response.text[:300]
    assert response.headers["X-Correlation-ID"] != long_id
    assert len(response.headers["X-Correlation-ID"]) <= 64
    assert server_errors(web) == []


def test_a_long_or_multiline_correlation_id_on_a_frame_is_replaced(web, team):
    async def scenario() -> None:
        ws = await WS.open(web.ws_url(team["sid"], team["tokens"]["bob"]))
        for n, cid in enumerate(["c" * 100, "abc\n", "forged\nlevel=ERROR"]):
            frame = {"type": "context_update", "client_msg_id": f"m-{n}", "data": {"n": n}, "correlation_id": cid}
            await ws.send(frame)
            reply = await _reply(ws)
            while reply.get("type") == "event":
                reply = await _reply(ws)
            assert reply.get("type") == "ack", (cid, reply)
            assert reply["client_msg_id"] == f"m-{n}", (cid, ws.frames[-3:])
        await ws.close()

    asyncio.run(scenario())
    from apps.eventbus.models import OutboxMessage

    stored = list(OutboxMessage.objects.filter(routing_key="context.updated").values_list("correlation_id", flat=True))
    assert len(stored) == 3
    assert all(0 < len(cid) <= 64 and "\n" not in cid for cid in stored), stored
    assert server_errors(web) == []


# --- fuzzing the frame handlers on the real server ------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
_frames = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["context_update", "resume", "ping", "typing", "presence", "nope"])},
        optional={
            "data": _json,
            "client_msg_id": _json,
            "event_type": _json,
            "after_seq": _json,
            "t": _json,
            "active": _json,
            "state": _json,
            "correlation_id": _json,
        },
    ).map(lambda f: json.dumps(f, allow_nan=True)),
    st.text(max_size=50),
    _json.map(lambda v: json.dumps(v, allow_nan=True)),
)


def test_fuzzed_frames_never_close_the_socket_or_fail_the_server(start_web, team):
    web = start_web(WS_RATE_PER_SECOND="10000", WS_RATE_BURST="10000")
    with sync_connect(web.ws_url(team["sid"], team["tokens"]["bob"]), open_timeout=10, ping_interval=None) as conn:
        assert json.loads(conn.recv(timeout=10))["type"] == "hello"
        _fuzz(conn)
    assert server_errors(web) == []


def _fuzz(conn) -> None:
    counter = iter(range(10**9))

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(frame=_frames)
    @example(frame='{"type": "context_update", "data": {"t": "a\\u0000"}}')
    @example(frame='{"type": "context_update", "data": {"t": "\\udc00"}}')
    @example(frame='{"type": "context_update", "data": {"x": NaN}}')
    @example(frame='{"type": "context_update", "data": ' + _nested(900) + "}")
    @example(frame="[" * 90_000)
    def one(frame: str) -> None:
        mark = f"probe-{next(counter)}"
        try:
            conn.send(frame.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
            conn.send(json.dumps({"type": "ping", "t": mark}))
            while True:
                reply = json.loads(conn.recv(timeout=10))
                if reply.get("type") == "pong" and reply.get("t") == mark:
                    break
        except ConnectionClosed as closed:
            pytest.fail(f"closed {closed.rcvd.code if closed.rcvd else None} after {frame[:200]!r}")

    one()
