"""What clients do to the stack during a scenario, and what each of them was told.

Every record here is an observation from outside the platform: an append the
API or the WebSocket acknowledged (with its seq), a frame a listener received,
a canary the API accepted. The ledger (tests/chaos/ledger.py) reconciles them
with the database and the tap queue at the end.

* ``RestAppender``: ``POST /events/`` with an ``Idempotency-Key``; a failure
  (connection reset, 5xx, 503 with ``Retry-After``) is retried with the same
  key until the API acknowledges it, as a careful client does.
* ``WsAppender``: ``context_update`` frames with a ``client_msg_id``; after a
  drop it reconnects and sends the unacknowledged frame again.
* ``Listener``: follows the session, resumes after the last seq it saw on
  every reconnect, and records each connection's frames.
* ``CanarySender``: canary tasks in ``ok``, ``fail`` and ``crash`` modes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect

RETRY_FOR_S = 60.0  # a client gives up on one append after this long (reported, not counted lost)
RETRYABLE_WS_CODES = ("server_error", "service_unavailable", "throttled", "rate_limited")


@dataclass
class Ack:
    key: str
    seq: int
    via: str
    at: float = field(default_factory=time.monotonic)


class _Worker(threading.Thread):
    def __init__(self, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.retries = 0
        self.given_up: list[str] = []

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # noqa: BLE001 - reported by the scenario
            self.error = exc

    def work(self) -> None:
        raise NotImplementedError


class RestAppender(_Worker):
    def __init__(self, *, url: str, token: str, session_id: str, name: str, pause: float = 0.03) -> None:
        super().__init__(name)
        self.url, self.token, self.session_id, self.pause = url, token, session_id, pause
        self.acks: list[Ack] = []
        self.statuses: dict[str, int] = {}

    def work(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10, headers={"Authorization": f"Token {self.token}"}) as http:
            for n in itertools.count():
                if self.stop_event.is_set():
                    return
                key = f"{self.name}-{n}-{uuid.uuid4().hex[:8]}"
                self._append(http, key)
                time.sleep(self.pause)

    def _append(self, http: httpx.Client, key: str) -> None:
        deadline = time.monotonic() + RETRY_FOR_S
        body = {"event_type": "context_update", "data": {"text": f"chaos {key}", "k": key}}
        while time.monotonic() < deadline:
            try:
                response = http.post(
                    f"/api/v1/sessions/{self.session_id}/events/", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.HTTPError as exc:
                self.statuses[type(exc).__name__] = self.statuses.get(type(exc).__name__, 0) + 1
                self.retries += 1
                time.sleep(0.2)
                continue
            self.statuses[str(response.status_code)] = self.statuses.get(str(response.status_code), 0) + 1
            if response.status_code in (200, 201):
                self.acks.append(Ack(key=key, seq=int(response.json()["seq"]), via="rest"))
                return
            if response.status_code >= 500 or response.status_code in (408, 409, 429):
                self.retries += 1
                time.sleep(min(float(response.headers.get("Retry-After") or 0.2), 1.0))
                continue
            raise AssertionError(f"append refused: {response.status_code} {response.text[:300]}")
        self.given_up.append(key)


class WsAppender(_Worker):
    def __init__(self, *, ws_url: str, name: str, pause: float = 0.05) -> None:
        super().__init__(name)
        self.ws_url, self.pause = ws_url, pause
        self.acks: list[Ack] = []
        self.connections = 0

    def work(self) -> None:
        pending: str | None = None
        counter = itertools.count()
        while not self.stop_event.is_set():
            try:
                ws = connect(self.ws_url, open_timeout=10, close_timeout=2)
            except (OSError, InvalidHandshake, TimeoutError, InvalidStatus):
                self.retries += 1
                time.sleep(0.3)
                continue
            self.connections += 1
            try:
                with ws:
                    hello = json.loads(ws.recv(timeout=10))
                    assert hello["type"] == "hello", hello
                    while not self.stop_event.is_set():
                        if pending is None:
                            pending = f"{self.name}-{next(counter)}-{uuid.uuid4().hex[:8]}"
                        frame = {
                            "type": "context_update",
                            "client_msg_id": pending,
                            "data": {"text": f"chaos {pending}", "k": pending},
                        }
                        ws.send(json.dumps(frame))
                        if self._await_ack(ws, pending):
                            pending = None
                            time.sleep(self.pause)
            except (ConnectionClosed, OSError, TimeoutError):
                self.retries += 1
                time.sleep(0.2)

    def _await_ack(self, ws: Any, key: str) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if frame.get("type") == "ack" and frame.get("client_msg_id") == key:
                self.acks.append(Ack(key=key, seq=int(frame["seq"]), via="ws"))
                return True
            if frame.get("type") == "error" and self._echoes(frame, key):
                details = frame.get("details") or {}
                if details.get("retryable") or frame.get("code") in RETRYABLE_WS_CODES:
                    time.sleep(0.3)
                    return False  # send the same client_msg_id again
                raise AssertionError(f"ws append refused: {frame}")
        raise TimeoutError("no ack")

    @staticmethod
    def _echoes(frame: dict, key: str) -> bool:
        return frame.get("client_msg_id") in (None, key)


class Listener(_Worker):
    """Follows a session; on every close reconnects and resumes after the last seq it kept."""

    def __init__(self, *, ws_url: str, name: str) -> None:
        super().__init__(name)
        self.ws_url = ws_url
        self.kept: list[int] = []
        self.repeated_in_connection = 0
        self.close_codes: list[int | None] = []
        self.connected = threading.Event()

    @property
    def last(self) -> int:
        return self.kept[-1] if self.kept else 0

    def work(self) -> None:
        while not self.stop_event.is_set():
            try:
                # Resume on the handshake: the gap comes before any live event (docs/architecture.md).
                ws = connect(f"{self.ws_url}&after_seq={self.last}", open_timeout=10, close_timeout=2)
            except (OSError, InvalidHandshake, TimeoutError, InvalidStatus):
                time.sleep(0.3)
                continue
            seen: set[int] = set()
            try:
                with ws:
                    hello = json.loads(ws.recv(timeout=10))
                    assert hello["type"] == "hello", hello
                    self.connected.set()
                    while not self.stop_event.is_set():
                        try:
                            frame = json.loads(ws.recv(timeout=0.5))
                        except TimeoutError:
                            continue
                        for seq in self._seqs(frame):
                            if seq in seen:
                                self.repeated_in_connection += 1  # the server sent one seq twice
                            seen.add(seq)
                            if seq > self.last:
                                self.kept.append(seq)
            except ConnectionClosed as exc:
                self.close_codes.append(exc.rcvd.code if exc.rcvd else None)
            except (OSError, TimeoutError):
                self.close_codes.append(None)

    @staticmethod
    def _seqs(frame: dict) -> list[int]:
        if frame.get("type") == "event":
            return [int(frame["seq"])]
        if frame.get("type") == "events":
            return [int(e["seq"]) for e in frame.get("events", [])]
        return []


@dataclass
class Canary:
    id: str
    mode: str
    task_id: str


class CanarySender(_Worker):
    MODES = ("crash", "ok", "fail", "ok", "fail", "ok")  # the crash first: its five deliveries take longest

    def __init__(self, *, url: str, token: str, name: str = "canary", every: float = 0.6, crashes: int = 1) -> None:
        super().__init__(name)
        self.url, self.token, self.every, self.crashes = url, token, every, crashes
        self.accepted: list[Canary] = []
        self.refused: dict[str, int] = {}

    def work(self) -> None:
        modes = itertools.cycle(self.MODES)
        crashed = 0
        with httpx.Client(base_url=self.url, timeout=10, headers={"Authorization": f"Token {self.token}"}) as http:
            while not self.stop_event.wait(self.every):
                mode = next(modes)
                if mode == "crash":
                    if crashed >= self.crashes:
                        continue
                    crashed += 1
                try:
                    response = http.post("/api/v1/ops/canary/", json={"mode": mode})
                except httpx.HTTPError as exc:
                    self.refused[type(exc).__name__] = self.refused.get(type(exc).__name__, 0) + 1
                    continue
                if response.status_code == 201:
                    body = response.json()
                    self.accepted.append(Canary(id=body["id"], mode=mode, task_id=body["task_id"]))
                else:  # not accepted: the client knows, so nothing is owed (a 503 during an outage)
                    key = str(response.status_code)
                    self.refused[key] = self.refused.get(key, 0) + 1


def stop_all(workers: list[_Worker], *, timeout: float = 90.0) -> None:
    for worker in workers:
        worker.stop()
    deadline = time.monotonic() + timeout
    for worker in workers:
        with contextlib.suppress(RuntimeError):
            worker.join(timeout=max(0.1, deadline - time.monotonic()))
