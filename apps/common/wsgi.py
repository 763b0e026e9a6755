"""WSGI middleware: refuse oversized request bodies before Django reads them.

The WSGI twin of ``apps.common.asgi.BodySizeLimitMiddleware``, with the same
limit (``DATA_UPLOAD_MAX_MEMORY_SIZE``) and the same 413 JSON error. Django's
WSGI handler reads at most ``Content-Length`` bytes, so a declared length over
the limit is answered at once; a body without a length (chunked) reads as
empty in Django and fails validation, never buffering more than it declared.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def body_too_large_body(limit: int) -> bytes:
    """The 413 body both servers answer with."""
    return json.dumps(
        {"code": "payload_too_large", "message": "Request body is too large.", "details": {"max_bytes": limit}}
    ).encode()


class BodySizeLimitMiddleware:
    def __init__(self, app: WSGIApp, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        limit = self.max_bytes if self.max_bytes is not None else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            declared = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if limit is not None and declared > limit:
            body = body_too_large_body(limit)
            start_response(
                "413 Request Entity Too Large",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")],
            )
            return [body]
        return self.app(environ, start_response)
