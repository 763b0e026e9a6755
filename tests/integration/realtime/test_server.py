"""The WebSocket endpoint on a real uvicorn process with real ``websockets`` clients.

PostgreSQL, Redis (shared, or a private one that the test restarts) and the
server process are all real; appends go through the REST API or the
``context_update`` frame, exactly as clients would send them.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from apps.context.models import Participant
from apps.context.services import EventInput, context_event_append, participant_add
from tests.integration.realtime.conftest import ResumingClient, rest_append
from tests.support.services import PrivateRedis

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def team(session_factory, user, make_user):
    session = session_factory()
    members = {"alice": user}
    for name in ("bob", "carol", "dave"):
        members[name] = make_user(name)
        participant_add(session=session, actor=user, username=name, role=Participant.Role.EDITOR)
    tokens = {name: Token.objects.get_or_create(user=u)[0].key for name, u in members.items()}
    return {"session": session, "sid": str(session.pk), "users": members, "tokens": tokens}


def _append_directly(team: dict, *texts: str) -> None:
    """A commit that no live broadcast reaches (the writer's Redis is not the server's)."""
    try:
        context_event_append(
            session=team["session"],
            author=team["users"]["alice"],
            events=[EventInput(event_type="context_update", data={"text": t}) for t in texts],
        )
    finally:
        connection.close()


def test_broadcast_reaches_everyone_and_a_dropped_client_resumes_in_order(team, start_server):
    server = start_server()

    async def scenario():
        clients = {n: ResumingClient(server.ws_url(team["sid"], team["tokens"][n]), n) for n in team["tokens"]}
        for client in clients.values():
            hello = await client.open()
            assert hello["last_seq"] == 0
        # REST append and a WS context_update both reach every participant.
        await rest_append(server, team["sid"], team["tokens"]["alice"], "from-rest")
        await clients["bob"].send({"type": "context_update", "data": {"text": "from-ws"}, "client_msg_id": "b-1"})
        for client in clients.values():
            await client.collect_until(2, reconnect=False)
        ack = await clients["bob"].next_frame(timeout=5)
        while ack["type"] != "ack":
            ack = await clients["bob"].next_frame(timeout=5)
        assert ack == {"type": "ack", "client_msg_id": "b-1", "seq": 2, "duplicate": False}

        # Carol drops; others keep appending (single events and a batch, REST and WS).
        await clients["carol"].close()
        for i in range(10):
            await rest_append(server, team["sid"], team["tokens"]["alice"], f"missed-{i}")
        await rest_append(server, team["sid"], team["tokens"]["dave"], *[f"batch-{i}" for i in range(25)])
        for i in range(5):
            await clients["bob"].send(
                {"type": "context_update", "data": {"text": f"bob-{i}"}, "client_msg_id": f"b-more-{i}"}
            )
        last = 2 + 10 + 25 + 5
        for name in ("alice", "bob", "dave"):
            await clients[name].collect_until(last, reconnect=False)
            assert clients[name].seqs == list(range(1, last + 1))

        # Carol comes back: resume replays every missed event in order, then live goes on.
        hello = await clients["carol"].open(resume=True)
        assert hello["last_seq"] == last
        await clients["carol"].collect_until(last, reconnect=False)
        await rest_append(server, team["sid"], team["tokens"]["alice"], "after-resume")
        for client in clients.values():
            await client.collect_until(last + 1, reconnect=False)
            assert client.seqs == list(range(1, last + 2)), client.name
        texts = [f["data"]["text"] for f in clients["carol"].frames if f["type"] == "event"]
        assert texts[2:12] == [f"missed-{i}" for i in range(10)]
        # Nothing more, in particular no duplicate, arrives.
        for client in clients.values():
            with pytest.raises(TimeoutError):
                while True:
                    frame = await client.next_frame(timeout=0.5)
                    assert frame["type"] not in ("event",), frame
            await client.close()

    asyncio.run(scenario())


def test_refusals_reach_a_real_client_as_close_codes(team, start_server, make_user):
    server = start_server()
    outsider = Token.objects.create(user=make_user("mallory")).key

    async def close_code(url: str, **kwargs) -> int:
        async with connect(url, open_timeout=5, **kwargs) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
        return info.value.rcvd.code

    async def scenario():
        base = f"ws://127.0.0.1:{server.port}/ws/sessions/{team['sid']}/"
        assert await close_code(base) == 4401
        assert await close_code(base + f"?token={outsider}") == 4404
        assert await close_code(base + f"?token={team['tokens']['bob']}", origin="https://evil.example") == 4403
        async with connect(base, subprotocols=["context-engine", f"token.{team['tokens']['bob']}"]) as ws:
            assert ws.subprotocol == "context-engine"
            assert json.loads(await ws.recv())["type"] == "hello"

    asyncio.run(scenario())


def test_clients_reconnect_and_resume_after_a_redis_restart(team, start_server):
    redis_server = PrivateRedis()
    redis_server.start()
    try:
        server = start_server(REDIS_URL=redis_server.url, PRESENCE_HEARTBEAT_S="0.5")

        async def scenario():
            clients = [ResumingClient(server.ws_url(team["sid"], team["tokens"][n]), n) for n in ("bob", "carol")]
            for client in clients:
                await client.open()
            await rest_append(server, team["sid"], team["tokens"]["alice"], "before-1", "before-2", "before-3")
            for client in clients:
                await client.collect_until(3, reconnect=False)

            await asyncio.to_thread(redis_server.stop)
            # Committed while Redis is down: no broadcast can carry these.
            await asyncio.to_thread(_append_directly, team, "during-1", "during-2")
            await asyncio.sleep(1.0)
            await asyncio.to_thread(redis_server.start)
            await rest_append(server, team["sid"], team["tokens"]["alice"], "after-1", "after-2")

            for client in clients:
                await client.collect_until(7, timeout=45)
                assert client.seqs == list(range(1, 8)), (client.name, client.seqs, client.reconnects)
            # Still live afterwards.
            await rest_append(server, team["sid"], team["tokens"]["alice"], "later")
            for client in clients:
                await client.collect_until(8, timeout=15)
                await client.close()

        asyncio.run(scenario())
    finally:
        redis_server.cleanup()


@pytest.mark.slow
def test_idle_connection_still_receives_a_broadcast_after_65_seconds(team, start_server):
    """redis-py 8 drops sockets idle for 5 s unless the layer sets socket_timeout None."""
    server = start_server()

    async def scenario():
        client = ResumingClient(server.ws_url(team["sid"], team["tokens"]["bob"]), "bob")
        await client.open()
        await asyncio.sleep(65)
        await rest_append(server, team["sid"], team["tokens"]["alice"], "wake-up")
        frame = await client.next_frame(timeout=5)
        while frame["type"] != "event":
            frame = await client.next_frame(timeout=5)
        assert frame["seq"] == 1 and client.reconnects == 0
        await client.close()

    asyncio.run(scenario())
