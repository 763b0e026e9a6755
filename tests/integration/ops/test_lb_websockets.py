"""WebSocket clients through HAProxy are moved by a restart: close 1012, reconnect, resume, no missed event."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = [pytest.mark.integration]

SERVICE_RESTART = 1012  # uvicorn's close code on graceful shutdown: "reconnect"


class Client(threading.Thread):
    """Follows a session; on any close it reconnects through HAProxy and resumes after the last seq it saw."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seqs: list[int] = []
        self.close_codes: list[int | None] = []
        self.connections = 0
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._session()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _session(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                # Resume on the handshake: the gap comes before any live event, in order
                # (a resume frame races the live events already sent; docs/architecture.md §7).
                ws = connect(f"{self.url}&after_seq={self.seqs[-1]}" if self.seqs else self.url, open_timeout=10)
                break
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError("could not reconnect") from exc
                time.sleep(0.2)
        with ws:
            self.connections += 1
            hello = json.loads(ws.recv(timeout=10))
            assert hello["type"] == "hello", hello
            self.connected.set()
            while not self.stop.is_set():
                try:
                    frame = json.loads(ws.recv(timeout=0.5))
                except TimeoutError:
                    continue
                except ConnectionClosed as exc:
                    self.close_codes.append(exc.rcvd.code if exc.rcvd else None)
                    return
                if frame["type"] == "event":
                    if self.seqs and frame["seq"] <= self.seqs[-1]:
                        continue  # a replayed copy of what this client already has
                    self.seqs.append(frame["seq"])


def test_websocket_clients_reconnect_and_resume_without_missing_an_event(
    lb, web_pair, transactional_db, user, session_factory
):
    haproxy = lb
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=user).key
    session = session_factory()
    ws_url = haproxy.url.replace("http://", "ws://") + f"/ws/sessions/{session.id}/?token={token}"
    clients = [Client(ws_url) for _ in range(4)]
    for client in clients:
        client.start()
        assert client.connected.wait(30), client.error

    sent: list[int] = []
    failures: list[str] = []

    def write(count: int) -> None:
        with httpx.Client(base_url=haproxy.url, timeout=15, headers={"Authorization": f"Token {token}"}) as http:
            for i in range(count):
                response = http.post(
                    f"/api/v1/sessions/{session.id}/events/",
                    json={"event_type": "context_update", "data": {"text": f"update {i}"}},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                if response.status_code == 201:
                    sent.append(response.json()["seq"])
                else:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                time.sleep(0.05)

    writer = threading.Thread(target=write, args=(80,))
    writer.start()
    time.sleep(1.0)
    # Restart the instance holding the most sockets (with both in full rotation
    # the clients are spread, but do not depend on it).
    sessions = haproxy.server_sessions()
    target = max(web_pair, key=lambda instance: sessions.get(instance.name, 0))
    assert sessions.get(target.name, 0) > 0, sessions
    target.stop()  # graceful: its WebSocket clients get 1012 and reconnect to the other instance
    target.start()
    haproxy.wait_status(target.name, "UP", timeout=30)
    writer.join(timeout=120)

    last = max(sent)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(not c.seqs or c.seqs[-1] < last for c in clients):
        time.sleep(0.2)
    for client in clients:
        client.stop.set()
    for client in clients:
        client.join(timeout=10)

    assert failures == []
    assert len(sent) == 80
    moved = [c for c in clients if SERVICE_RESTART in c.close_codes]
    assert moved, [c.close_codes for c in clients]
    for client in clients:
        assert client.error is None, client.error
        first = client.seqs[0]
        assert client.seqs == list(range(first, last + 1)), (client.close_codes, client.seqs)
        assert first <= min(sent)
    assert all(c.connections >= 2 for c in moved)
