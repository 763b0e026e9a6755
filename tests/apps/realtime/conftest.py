"""WebsocketCommunicator helpers on the real Redis channel layer and real PostgreSQL.

Tests are sync functions that run one coroutine with ``async_to_sync`` and use
``transactional_db``: broadcasts fire on commit, and the consumer reads through
``database_sync_to_async``, so the data must really be committed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from apps.realtime.routing import websocket_application


class Client:
    """One WebSocket client; frames it skipped while waiting stay in ``seen``."""

    def __init__(self, comm: WebsocketCommunicator) -> None:
        self.comm = comm
        self.seen: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        self.hello: dict[str, Any] | None = None

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.comm.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        if self.pending:
            return self.pending.pop(0)
        frame = json.loads(await self.comm.receive_from(timeout=timeout))
        self.seen.append(frame)
        return frame

    async def recv_type(self, kind: str, timeout: float = 10, **match: Any) -> dict[str, Any]:
        """The next frame of ``kind`` (and matching fields); other frames are kept for later."""
        skipped = []
        try:
            while True:
                frame = await self.recv(timeout=timeout)
                if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
                    return frame
                skipped.append(frame)
        finally:
            self.pending = skipped + self.pending

    async def events(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        return [await self.recv_type("event", timeout=timeout) for _ in range(count)]

    async def nothing(self, timeout: float = 0.3) -> bool:
        """True when no frame (other than presence/typing chatter) arrives within ``timeout``."""
        chatter = ("presence", "typing")
        if any(f["type"] not in chatter for f in self.pending):
            return False
        while not await self.comm.receive_nothing(timeout=timeout):
            frame = json.loads(await self.comm.receive_from(timeout=timeout))
            self.seen.append(frame)
            self.pending.append(frame)
            if frame["type"] not in chatter:
                return False
        return True

    async def closed_with(self, timeout: float = 10) -> int:
        while True:
            output = await self.comm.receive_output(timeout=timeout)
            if output["type"] == "websocket.close":
                return output.get("code", 1000)

    async def close(self) -> None:
        await self.comm.disconnect()


async def open_client(
    session_id: Any,
    token: str | None = None,
    *,
    origin: str | None = None,
    subprotocols: list[str] | None = None,
    path: str | None = None,
    expect_hello: bool = True,
) -> Client:
    target = path or f"/ws/sessions/{session_id}/"
    if token and not subprotocols:
        target += f"?token={token}"
    headers = [(b"origin", origin.encode())] if origin else []
    comm = WebsocketCommunicator(websocket_application, target, headers=headers, subprotocols=subprotocols)
    connected, subprotocol = await comm.connect(timeout=10)
    assert connected, subprotocol
    client = Client(comm)
    client.subprotocol = subprotocol
    if expect_hello:
        client.hello = await client.recv_type("hello")
    return client


@pytest.fixture
def token_for(transactional_db) -> Callable[[Any], str]:
    from rest_framework.authtoken.models import Token

    def factory(user: Any) -> str:
        return Token.objects.get_or_create(user=user)[0].key

    return factory


def _append(session: Any, user: Any, *texts: str) -> list[int]:
    from apps.context.services import EventInput, context_event_append

    events = context_event_append(
        session=session, author=user, events=[EventInput(event_type="context_update", data={"text": t}) for t in texts]
    )
    return [e.seq for e in events]


# The REST append's code path: the same service, committed in a worker thread.
append_events = database_sync_to_async(_append)
