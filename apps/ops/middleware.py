"""Request middleware: correlation id and HTTP latency histogram.

First in ``MIDDLEWARE`` so it times everything below it and every log line of
the request carries the correlation id. Works under WSGI and ASGI without a
thread hop (it is sync and async capable).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from apps.common.logging import HEADER, correlation_id_accept, set_correlation_id
from apps.common.metrics import HTTP_REQUEST_DURATION


def correlation_id_from(request: HttpRequest) -> str:
    return correlation_id_accept(request.headers.get(HEADER, ""))


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def route_label(request: HttpRequest) -> str:
    """The matched URL pattern (``api/v1/sessions/<uuid:pk>/``), never the raw path: bounded label values."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    return match.route or match.view_name or "unmatched"


class ObservabilityMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self.__acall__(request)
        cid = correlation_id_from(request)
        request.correlation_id = cid  # type: ignore[attr-defined]
        token = set_correlation_id(cid)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            return self._finish(request, response, started, cid)  # type: ignore[arg-type]
        finally:
            from apps.common.logging import correlation_id

            correlation_id.reset(token)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        cid = correlation_id_from(request)
        request.correlation_id = cid  # type: ignore[attr-defined]
        token = set_correlation_id(cid)
        started = time.perf_counter()
        try:
            response = await self.get_response(request)  # type: ignore[misc]
            return self._finish(request, response, started, cid)
        finally:
            from apps.common.logging import correlation_id

            correlation_id.reset(token)

    @staticmethod
    def _finish(request: HttpRequest, response: HttpResponse, started: float, cid: str) -> HttpResponse:
        HTTP_REQUEST_DURATION.labels(
            method=request.method if request.method in _METHODS else "OTHER",
            route=route_label(request),
            status=str(response.status_code),
        ).observe(time.perf_counter() - started)
        response[HEADER] = cid
        return response
