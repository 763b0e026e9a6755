"""ASGI middleware: refuse oversized request bodies before Django buffers them.

Django's ASGI handler reads the whole body into a spooled temporary file
before any view (or ``DATA_UPLOAD_MAX_MEMORY_SIZE`` check) runs, with no cap:
a client streaming gigabytes fills the disk. This wrapper answers 413 at once
when ``Content-Length`` is too large, and stops reading a chunked body as soon
as it passes the limit (Django sees a disconnect and sends nothing; this
middleware sends the 413). The limit is ``MAX_BODY_BYTES``
(``DATA_UPLOAD_MAX_MEMORY_SIZE``), the same one the JSON parser applies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from apps.common.wsgi import body_too_large_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _body_too_large(limit: int) -> tuple[Message, Message]:
    body = body_too_large_body(limit)
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class BodySizeLimitMiddleware:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_bytes if self.max_bytes is not None else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if scope["type"] != "http" or limit is None:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    for message in _body_too_large(limit):
                        await send(message)
                    return

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        if exceeded and not started:
            for message in _body_too_large(limit):
                await send(message)
