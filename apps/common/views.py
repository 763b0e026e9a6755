"""JSON answers for errors Django raises outside DRF views.

``/api/...`` URLs that match no route, and any 400/500 raised before or after
a DRF view, get the same ``{code, message, details}`` shape as every other API
error; other paths keep Django's HTML pages (admin, docs).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

API_PREFIX = "/api/"


def _error(code: str, message: str, status: int, details: dict[str, Any] | None = None) -> JsonResponse:
    return JsonResponse({"code": code, "message": message, "details": details or {}}, status=status)


@csrf_exempt  # nothing is written here; without this a POST would get CSRF's HTML 403
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Catch-all for ``/api/`` paths no route matched (any method)."""
    details: dict[str, Any] = {"path": request.path}
    if not request.path.endswith("/"):
        # APPEND_SLASH cannot redirect here (this catch-all matches first), so say it.
        try:
            match = resolve(request.path + "/")
        except Resolver404:
            match = None
        if match is not None and match.func is not api_not_found:
            details["hint"] = f"Did you mean {request.path}/ ?"
    return _error("not_found", "No API endpoint at this path.", 404, details)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        return _error("bad_request", "Bad request.", 400)
    return defaults.bad_request(request, exception)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        return _error("not_found", "Not found.", 404, {"path": request.path})
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        return _error("server_error", "Internal server error.", 500)
    return defaults.server_error(request)
