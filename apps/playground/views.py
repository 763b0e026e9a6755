"""Serves the playground's page and script from ``assets/`` (no template engine, nothing dynamic)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

ASSETS = Path(__file__).resolve().parent / "assets"
# The page loads only its own script and talks only to this origin's API and WebSocket.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@cache
def _asset(name: str) -> bytes:
    return (ASSETS / name).read_bytes()


def _serve(name: str, content_type: str) -> HttpResponse:
    response = HttpResponse(_asset(name), content_type=content_type)
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "no-cache"
    return response


@require_GET
def page(request: HttpRequest) -> HttpResponse:
    return _serve("index.html", "text/html; charset=utf-8")


@require_GET
def script(request: HttpRequest) -> HttpResponse:
    return _serve("playground.js", "text/javascript; charset=utf-8")


@require_GET
def stylesheet(request: HttpRequest) -> HttpResponse:
    return _serve("playground.css", "text/css; charset=utf-8")
