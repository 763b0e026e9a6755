"""Request middleware: correlation id and HTTP latency histogram; the failed-authentication lockout.

``ObservabilityMiddleware`` is first in ``MIDDLEWARE`` so it times everything
below it and every log line of the request carries the correlation id;
``AuthLockoutMiddleware`` comes next (apps/ops/lockout.py). Both work under
WSGI and ASGI without a thread hop (they are sync and async capable).
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, HttpResponse
from django.urls import NoReverseMatch, reverse

from apps.common.logging import HEADER, correlation_id_accept, set_correlation_id
from apps.common.metrics import HTTP_REQUEST_DURATION
from apps.ops import lockout


def correlation_id_from(request: HttpRequest) -> str:
    return correlation_id_accept(request.headers.get(HEADER, ""))


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def route_label(request: HttpRequest) -> str:
    """The matched URL pattern (``api/v1/sessions/<uuid:pk>/``), never the raw path: bounded label values."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    return match.route or match.view_name or "unmatched"


class _HybridMiddleware:
    """Runs sync under a WSGI server and async under ASGI, whichever the next layer is."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        raise NotImplementedError


# The probe paths (apps/ops/probe_urls.py) that must answer whatever Host header comes with them.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# What such a request reports as its host (never validated against ALLOWED_HOSTS).
PROBE_HOST = "probe.invalid"


def _probe_host() -> str:
    return PROBE_HOST


class ProbeHostMiddleware(_HybridMiddleware):
    """Probes are answered whatever their ``Host``: Kubernetes sends the pod's IP.

    ``ALLOWED_HOSTS`` would refuse that with 400 and the orchestrator would
    restart every pod. For ``/healthz`` and ``/readyz`` only, the request's host
    is a fixed name that is never checked; every other path is validated as usual.
    """

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if request.path_info in PROBE_PATHS:
            # An instance attribute shadows the method for this request only.
            cast(Any, request).get_host = _probe_host
        return self.get_response(request)


class ObservabilityMiddleware(_HybridMiddleware):
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


@functools.cache
def _login_paths() -> frozenset[str]:
    # Resolved on first use: the URLconf is not loaded when middleware is built.
    # A URLconf without one of them (the API benchmark's) just has nothing to guard there.
    paths = set()
    for name in ("admin:login", "auth-token"):
        with contextlib.suppress(NoReverseMatch):
            paths.add(reverse(name))
    return frozenset(paths)


# The username is read from a JSON login body only up to this size (the field allows 150 characters).
_LOGIN_BODY_MAX = 16_384


def _posted_username(request: HttpRequest) -> str | None:
    try:
        if request.content_type == "application/json":
            if int(request.headers.get("Content-Length") or 0) > _LOGIN_BODY_MAX:
                return None
            data = json.loads(request.body)
            username = data.get("username") if isinstance(data, dict) else None
        else:
            username = request.POST.get("username")
    except (ValueError, SuspiciousOperation):  # malformed bodies are the view's to refuse
        return None
    return username if isinstance(username, str) and username else None


class AuthLockoutMiddleware(_HybridMiddleware):
    """Refuses (429, ``Retry-After``) clients over the failed-authentication limits of apps/ops/lockout.py.

    Password logins are checked before the view (per IP and username) and
    counted by the ``user_login_failed`` signal; any other request carrying an
    ``Authorization`` header is checked against this process's locks (no I/O)
    and, when answered 401, counted.
    """

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self.__acall__(request)
        login = request.method == "POST" and request.path_info in _login_paths()
        refused = self._login_refused(request) if login else self._credential_refused(request)
        if refused is not None:
            return refused
        response = cast(HttpResponse, self.get_response(request))
        if not login and self._credential_failed(request, response):
            lockout.credential_failure_record(ip=lockout.client_ip(request))
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        login = request.method == "POST" and request.path_info in _login_paths()
        # The password check reads Redis: off the event loop (logins are rare; bearer checks do no I/O).
        refused = await sync_to_async(self._login_refused)(request) if login else self._credential_refused(request)
        if refused is not None:
            return refused
        response = await cast(Awaitable[HttpResponse], self.get_response(request))
        if not login and self._credential_failed(request, response):
            await sync_to_async(lockout.credential_failure_record)(ip=lockout.client_ip(request))
        return response

    @staticmethod
    def _login_refused(request: HttpRequest) -> HttpResponse | None:
        wait = lockout.login_locked_for(ip=lockout.client_ip(request), username=_posted_username(request))
        return lockout.locked_response(wait) if wait is not None else None

    @staticmethod
    def _credential_refused(request: HttpRequest) -> HttpResponse | None:
        if "HTTP_AUTHORIZATION" not in request.META:
            return None
        wait = lockout.credential_locked_for(ip=lockout.client_ip(request))
        return lockout.locked_response(wait) if wait is not None else None

    @staticmethod
    def _credential_failed(request: HttpRequest, response: HttpResponse) -> bool:
        return response.status_code == 401 and "HTTP_AUTHORIZATION" in request.META
