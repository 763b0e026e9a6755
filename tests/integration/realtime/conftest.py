"""A real ASGI server (uvicorn, as in the Procfile) and real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.services import free_port, wait_for_port


@dataclass
class Server:
    port: int
    process: subprocess.Popen

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, session_id: Any, token: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/sessions/{session_id}/?token={token}"


@pytest.fixture
def start_server(subprocess_env) -> Iterator[Callable[..., Server]]:
    """Start ``uvicorn project.asgi:application --ws websockets``; stopped at teardown."""
    servers: list[Server] = []

    def factory(**env: str) -> Server:
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "project.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--ws",
                "websockets",
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=subprocess_env(**env),
        )
        server = Server(port=port, process=process)
        servers.append(server)
        wait_for_port(port, timeout=30)
        return server

    yield factory
    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(timeout=10)


async def rest_append(server: Server, session_id: Any, token: str, *texts: str) -> list[int]:
    """Append through the REST API (one event, or a batch); returns the seqs."""
    events = [{"event_type": "context_update", "data": {"text": t}} for t in texts]
    body: dict[str, Any] = events[0] if len(events) == 1 else {"events": events}
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        response = await client.post(
            f"/api/v1/sessions/{session_id}/events/", json=body, headers={"Authorization": f"Token {token}"}
        )
    assert response.status_code == 201, response.text
    data = response.json()
    return [e["seq"] for e in data["events"]] if "events" in data else [data["seq"]]


@dataclass
class ResumingClient:
    """A client as a browser app would write it: on a drop it reconnects and resumes after the last seq it saw."""

    url: str
    name: str
    seqs: list[int] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    reconnects: int = 0
    ws: ClientConnection | None = None
    base_seq: int | None = None

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else (self.base_seq or 0)

    async def open(self, *, resume: bool = False, deadline_s: float = 30.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_s
        while True:
            try:
                self.ws = await connect(self.url, open_timeout=5, ping_interval=None)
                hello = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
                if hello.get("type") != "hello":
                    raise ConnectionError(f"expected hello, got {hello}")
                break
            except (OSError, ConnectionClosed, InvalidStatus, ConnectionError, TimeoutError):
                if loop.time() > give_up:
                    raise
                await asyncio.sleep(0.3)
        if self.base_seq is None:
            # A fresh client starts from the hello: what came before is the snapshot's.
            self.base_seq = hello["last_seq"]
        if resume:
            await self.ws.send(json.dumps({"type": "resume", "after_seq": self.last_seq}))
        return hello

    async def send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(frame))

    async def next_frame(self, timeout: float) -> dict[str, Any]:
        assert self.ws is not None
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append(frame)
        if frame.get("type") == "event":
            # The client-side check: every event exactly once, in order.
            assert frame["seq"] == self.last_seq + 1, (self.name, self.last_seq, frame["seq"])
            self.seqs.append(frame["seq"])
        return frame

    async def collect_until(self, seq: int, *, timeout: float = 30.0, reconnect: bool = True) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.last_seq < seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{self.name} stuck at seq {self.last_seq}, wanted {seq}")
            try:
                await self.next_frame(timeout=remaining)
            except ConnectionClosed:
                if not reconnect:
                    raise
                self.reconnects += 1
                await self.open(resume=True, deadline_s=max(1.0, deadline - loop.time()))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
