"""BodySizeLimitMiddleware in front of the real Django ASGI application."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.core.asgi import get_asgi_application

from apps.common.asgi import BodySizeLimitMiddleware


def call(app, *, body_chunks: list[bytes], headers: list[tuple[bytes, bytes]], path: str = "/api/v1/sessions/"):
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    chunks = list(body_chunks)
    read = {"n": 0}
    sent: list[dict] = []

    async def receive():
        if not chunks:
            await asyncio.sleep(3600)  # a real client stays connected until the response
        read["n"] += 1
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, read["n"]


@pytest.fixture
def app():
    return BodySizeLimitMiddleware(get_asgi_application(), max_bytes=1000)


def test_declared_length_over_the_limit_is_refused_unread(app):
    status, body, chunks_read = call(app, body_chunks=[b"x" * 2000], headers=[(b"content-length", b"2000")])
    assert status == 413 and json.loads(body)["code"] == "payload_too_large"
    assert chunks_read == 0


@pytest.mark.django_db(transaction=True)
def test_chunked_body_is_cut_off_once_it_passes_the_limit(app):
    chunks = [b"x" * 400 for _ in range(50)]  # 20 kB, no Content-Length
    status, body, chunks_read = call(app, body_chunks=chunks, headers=[])
    assert status == 413 and json.loads(body)["details"] == {"max_bytes": 1000}
    assert chunks_read == 3  # stopped reading at the first chunk past the limit


@pytest.mark.django_db(transaction=True)
def test_small_bodies_reach_django(app):
    status, body, _ = call(app, body_chunks=[b'{"title": "x"}'], headers=[(b"content-length", b"14")])
    assert status == 401  # Django answered (no token): the body passed through
    assert json.loads(body)["code"] == "not_authenticated"
