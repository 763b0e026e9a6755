"""A database that is away answers 503 with ``Retry-After``, in the API's JSON error shape.

During a PostgreSQL restart or failover every query fails with
``OperationalError``/``InterfaceError``. That is the server's temporary state,
not the request's fault: clients (and HAProxy, which retries what it may) should
come back shortly, and API clients should get JSON, never Django's HTML 500
page (DEBUG's technical page included). The broken connection is dropped so
the next request opens a fresh one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

# Seconds: about how long a PostgreSQL restart or a failover takes.
RETRY_AFTER_S = 2


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logger.warning("database unavailable; answering 503", extra={"path": request.path}, exc_info=True)
        for conn in connections.all(initialized_only=True):
            conn.close_if_unusable_or_obsolete()
        body = {
            "code": "service_unavailable",
            "message": "The database is unavailable; retry shortly.",
            "details": {"retry_after_seconds": RETRY_AFTER_S},
        }
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse(body, status=503)
        else:
            response = HttpResponse(body["message"], status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(RETRY_AFTER_S)
        return response
