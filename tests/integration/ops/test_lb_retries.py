"""HAProxy retries a POST that reached a server only where the API honours its Idempotency-Key.

The real HAProxy with the real docker/haproxy.cfg, in front of two stand-in
servers that answer every POST 503 (what ``retry-on`` retries) and count what
reaches them. Before, any POST carrying an Idempotency-Key was retried, though
only event appends deduplicate by it: a session create could be applied twice.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.support.haproxy import HAProxy
from tests.support.services import free_port

pytestmark = [pytest.mark.integration]


@dataclass
class StandIn:
    """An HTTP server on 127.0.0.1: healthy for /readyz, 503 to every POST (each one counted)."""

    port: int = field(default_factory=free_port)
    posts: list[str] = field(default_factory=list)

    def start(self) -> ThreadingHTTPServer:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stand_in.posts.append(self.path)
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@pytest.fixture(scope="module")
def stand_ins() -> Iterator[tuple[HAProxy, list[StandIn]]]:
    backends = [StandIn(), StandIn()]
    servers = [b.start() for b in backends]
    lb = HAProxy(backends=backends)  # type: ignore[arg-type]
    lb.start()
    try:
        lb.wait_settled()
        yield lb, backends
    finally:
        lb.stop()
        for server in servers:
            server.shutdown()


def _post(lb: HAProxy, backends: list[StandIn], path: str, *, key: bool) -> int:
    for backend in backends:
        backend.posts.clear()
    headers = {"Idempotency-Key": str(uuid.uuid4())} if key else {}
    response = httpx.post(f"{lb.url}{path}", json={}, headers=headers, timeout=30)
    assert response.status_code == 503
    return sum(len(b.posts) for b in backends)


def test_a_post_the_api_does_not_deduplicate_is_sent_once_even_with_an_idempotency_key(stand_ins):
    lb, backends = stand_ins
    assert _post(lb, backends, "/api/v1/sessions/", key=True) == 1
    assert _post(lb, backends, f"/api/v1/sessions/{uuid.uuid4()}/participants/", key=True) == 1


def test_an_event_append_with_a_key_is_retried_and_without_one_is_not(stand_ins):
    lb, backends = stand_ins
    events = f"/api/v1/sessions/{uuid.uuid4()}/events/"
    assert _post(lb, backends, events, key=True) > 1  # the API applies a key once: retrying is safe
    assert _post(lb, backends, events, key=False) == 1
