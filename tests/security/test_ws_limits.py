"""WebSocket limits enforced before buffering, on the Procfile's web process.

- a frame over WS_MAX_FRAME_BYTES is refused by the server itself (uvicorn's
  ``--ws-max-size``, close 1009) instead of being read whole and answered;
- a client that stops reading is closed (4408) instead of having every frame
  pushed to it queued in the web process (memory measured, printed with -s);
- WebSocket frames count against the same per-user budget as REST calls,
  across all of the user's sockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.security.conftest import WS, auth

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _websocket_server_pid(supervisor_pid: int) -> int:
    """The uvicorn process (``web-ws``) that project/serve.py started: it holds the sockets."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == supervisor_pid and b"uvicorn" in cmdline:
            return int(stat.parent.name)
    raise AssertionError("no web-ws child of the web process")


def test_a_frame_over_the_limit_is_refused_before_it_is_buffered(web, team):
    async def scenario() -> None:
        ws = await WS.open(web.ws_url(team["sid"], team["tokens"]["bob"]), max_size=None)
        try:
            await ws.send('{"type": "ping", "t": "' + "x" * (1024 * 1024) + '"}')  # 1 MiB, limit 96 KiB
            reply = await ws.recv(timeout=10)
        except ConnectionClosed as closed:
            reply = {"type": "closed", "code": closed.rcvd.code if closed.rcvd else None}
        while reply.get("type") == "presence":
            try:
                reply = await ws.recv(timeout=10)
            except ConnectionClosed as closed:
                reply = {"type": "closed", "code": closed.rcvd.code if closed.rcvd else None}
        assert reply == {"type": "closed", "code": 1009}, reply

    asyncio.run(scenario())

    async def within_limit() -> None:
        ws = await WS.open(web.ws_url(team["sid"], team["tokens"]["bob"]))
        # 60 KB of UTF-8 data in an 60 KB frame: under both limits.
        frame = {"type": "context_update", "data": {"text": "é" * 30_000}, "client_msg_id": "big-ok"}
        await ws.send(json.dumps(frame, ensure_ascii=False))
        assert (await ws.recv_type("ack"))["client_msg_id"] == "big-ok"
        await ws.close()

    asyncio.run(within_limit())


def _raw_websocket(port: int, path: str) -> socket.socket:
    """A WebSocket handshake on a plain socket with a tiny receive buffer; after it, nothing is read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_a_client_that_stops_reading_is_closed_not_buffered(start_web, team):
    web = start_web(WS_SEND_TIMEOUT_S="2")
    # 300 x 60 KB = 18 MB pushed at a socket that reads nothing: more than the kernel buffers and
    # HAProxy between uvicorn and the client can hold (a few MB on loopback), so delivering it all
    # means the server buffered it.
    appended = 300
    payload = "y" * 60_000
    sock = _raw_websocket(web.port, f"/ws/sessions/{team['sid']}/?token={team['tokens']['vera']}")
    server_pid = _websocket_server_pid(web.process.pid)
    rss_before = _rss_kib(server_pid)
    started = time.monotonic()
    with httpx.Client(base_url=web.http, timeout=30) as client:
        for i in range(appended):
            response = client.post(
                f"/api/v1/sessions/{team['sid']}/events/",
                json={"event_type": "note", "data": {"i": i, "text": payload}},
                headers=auth(team["tokens"]["alice"]),
            )
            assert response.status_code == 201, response.text
    rss_after = _rss_kib(server_pid)
    # Now read: what was already in flight arrives, then the server's close (EOF).
    received, closed = 0, False
    deadline = time.monotonic() + 40
    sock.settimeout(20)
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                closed = True
                break
            received += len(chunk)
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        closed = False
    finally:
        sock.close()
    print(
        f"\nstalled reader: closed={closed} after {time.monotonic() - started:.1f}s, got {received / 1e6:.1f} MB"
        f" of {appended * 60_000 / 1e6:.1f} MB pushed; web RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB"
    )
    assert closed, f"the server kept the stalled socket open ({received} bytes delivered)"
    assert received < appended * 60_000, "everything was buffered and delivered instead of dropped"
    # and the server's memory grew by less than half of what was pushed (KiB)
    assert rss_after - rss_before < appended * 60_000 // 2 // 1024, (rss_before, rss_after)
    # The server is still healthy for everyone else.
    alice = auth(team["tokens"]["alice"])
    assert httpx.get(f"{web.http}/api/v1/sessions/", headers=alice, timeout=10).status_code == 200


def test_websocket_appends_and_rest_share_one_per_user_budget(start_web, team):
    web = start_web(DJANGO_SETTINGS_MODULE="tests.security.throttled_settings", THROTTLE_USER_RATE="10/min")

    async def scenario() -> None:
        first = await WS.open(web.ws_url(team["sid"], team["tokens"]["bob"]))
        second = await WS.open(web.ws_url(team["sid"], team["tokens"]["bob"]))
        outcomes = []
        for i in range(12):  # over two sockets: the budget is the user's, not the socket's
            ws = first if i % 2 == 0 else second
            await ws.send({"type": "context_update", "data": {"i": i}, "client_msg_id": f"m-{i}"})
            while True:
                frame = await ws.recv(timeout=10)
                if frame["type"] in ("ack", "error"):
                    outcomes.append(frame["type"] if frame["type"] == "ack" else frame["code"])
                    break
        assert outcomes.count("ack") == 10, outcomes
        assert outcomes[10:] == ["rate_limited", "rate_limited"], outcomes
        await first.close()
        await second.close()

    asyncio.run(scenario())
    response = httpx.post(
        f"{web.http}/api/v1/sessions/{team['sid']}/events/",
        json={"event_type": "note", "data": {"text": "rest"}},
        headers=auth(team["tokens"]["bob"]),
        timeout=10,
    )
    assert response.status_code == 429, response.text
    assert "Retry-After" in response.headers
    # Another user's budget is untouched.
    response = httpx.post(
        f"{web.http}/api/v1/sessions/{team['sid']}/events/",
        json={"event_type": "note", "data": {"text": "alice"}},
        headers=auth(team["tokens"]["alice"]),
        timeout=10,
    )
    assert response.status_code == 201, response.text


def _web_argv(text: str) -> list[str]:
    import re
    import shlex

    # ${VAR:-default} and "${VAR:-default}" -> default, as a shell without VAR set expands them.
    return shlex.split(re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text))


def test_every_way_the_web_process_starts_enforces_the_frame_limit():
    """uvicorn serves every WebSocket (roles web-ws, web-asgi); make up's web-local and the images run those."""
    from django.conf import settings

    from tests.support.processes import REPO_ROOT

    procfile = next(line for line in (REPO_ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    assert "entrypoint.sh web-local" in procfile
    entrypoint = (REPO_ROOT / "docker" / "entrypoint.sh").read_text()
    assert entrypoint.count("exec uvicorn") == 1, "one uvicorn command line, shared by every way WebSockets are served"
    start = entrypoint.index("    web-ws | web-asgi)")
    web_role = entrypoint[start : entrypoint.index(";;", start)]
    web_role = " ".join(line.strip().rstrip("\\") for line in web_role.splitlines() if not line.strip().startswith("#"))
    argv = _web_argv(web_role)
    assert "--ws-max-size" in argv, "uvicorn buffers frames up to its 16 MiB default"
    assert int(argv[argv.index("--ws-max-size") + 1]) == settings.WS_MAX_FRAME_BYTES
    assert "--ws-max-queue" in argv, "uvicorn queues 32 unread frames per socket by default"
    assert int(argv[argv.index("--ws-max-queue") + 1]) <= 8
