"""The platform's own web process, started as the Procfile starts it, for black-box attacks.

``web`` runs the Procfile's ``web`` line (HAProxy in front of gunicorn for HTTP
and uvicorn for ``/ws/``, project/serve.py, with uvicorn's WebSocket size and
queue limits and its access log) on a free port, on this run's
test database, vhost and Redis prefix, with its output captured so a test can
read every line it logged. Tests that use it need ``transactional_db``: the
server sees only committed rows.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.processes import REPO_ROOT, child_env
from tests.support.services import free_port, wait_for_port


def procfile_web_command() -> str:
    for line in (REPO_ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.partition(":")[2].strip()
    raise AssertionError("the Procfile has no web process")


@dataclass
class Web:
    port: int
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, session_id: Any, token: str | None = None) -> str:
        base = f"ws://127.0.0.1:{self.port}/ws/sessions/{session_id}/"
        return base + (f"?token={token}" if token else "")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _wait_http(web: Web, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if web.process.poll() is not None:
            raise AssertionError(f"web process exited: {web.log()[-3000:]}")
        try:
            if httpx.get(f"{web.http}/healthz", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"web process not serving after {timeout}s: {web.log()[-3000:]}")


@pytest.fixture
def start_web(transactional_db) -> Iterator[Callable[..., Web]]:
    """Start the Procfile's web line (``start_web(SETTING="value")`` overrides the environment)."""
    started: list[Web] = []

    def factory(**env: str) -> Web:
        port = free_port()
        log_path = Path(tempfile.mkdtemp(prefix="ce-web-")) / "web.log"
        environment = child_env(WEB_HOST="127.0.0.1", WEB_PORT=str(port), **env)
        process = subprocess.Popen(  # noqa: S602 - the Procfile line is a shell command (it execs the entrypoint)
            procfile_web_command(),
            shell=True,
            cwd=REPO_ROOT,
            env=environment,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        web = Web(port=port, process=process, log_path=log_path, env=environment)
        started.append(web)
        wait_for_port(port, timeout=60)
        _wait_http(web)
        return web

    yield factory
    for web in started:
        web.stop()


@pytest.fixture
def web(start_web) -> Web:
    return start_web()


@pytest.fixture
def team(transactional_db, make_user, session_factory, user) -> dict[str, Any]:
    """A session owned by alice with bob (editor), vera (viewer), and an outsider mallory; a token each."""
    from rest_framework.authtoken.models import Token

    from apps.context import services

    session = session_factory(title="Security review")
    users = {"alice": user}
    for name, role in (("bob", "editor"), ("vera", "viewer")):
        users[name] = make_user(name)
        services.participant_add(session=session, actor=user, username=name, role=role)
    users["mallory"] = make_user("mallory")
    tokens = {name: Token.objects.get_or_create(user=u)[0].key for name, u in users.items()}
    return {"session": session, "sid": str(session.pk), "users": users, "tokens": tokens}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


class WS:
    """One real ``websockets`` client; ``frames`` holds everything received."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []
        self.hello: dict[str, Any] | None = None

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> WS:
        kwargs.setdefault("open_timeout", 10)
        kwargs.setdefault("ping_interval", None)
        client = cls(await connect(url, **kwargs))
        hello = await client.recv(timeout=10)
        assert hello.get("type") == "hello", hello
        client.hello = hello
        return client

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.conn.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.conn.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def recv_type(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(timeout=max(0.01, deadline - loop.time()))
            if frame.get("type") == kind:
                return frame

    async def closed_code(self, timeout: float = 10) -> int:
        """Read until the server closes; the close code it sent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                await self.recv(timeout=max(0.01, deadline - loop.time()))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code

    async def close(self) -> None:
        await self.conn.close()


def server_errors(web: Web) -> list[str]:
    """Lines of the web process's log that record a server error or traceback."""
    return [
        line
        for line in web.log().splitlines()
        if "Traceback" in line or '" 500' in line or "Internal Server Error" in line or '"level": "ERROR"' in line
    ]
