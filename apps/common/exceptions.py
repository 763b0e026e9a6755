"""One error type for the whole platform, mapped once for REST.

Services raise ``ApplicationError`` (or a subclass); the REST exception handler
turns it, and every DRF/Django error, into ``{"code", "message", "details"}``.
The WebSocket consumer maps it once to an ``error`` frame.
"""

from __future__ import annotations

import math
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ApplicationError(Exception):
    code = "error"
    status_code = status.HTTP_400_BAD_REQUEST
    # Whole seconds a client should wait (quotas: 429); sent as Retry-After over REST.
    retry_after: int | None = None

    def __init__(
        self, message: str, *, code: str | None = None, details: Any = None, status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.details = details if details is not None else {}

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class NotFound(ApplicationError):
    code = "not_found"
    status_code = status.HTTP_404_NOT_FOUND


class PermissionDenied(ApplicationError):
    code = "permission_denied"
    status_code = status.HTTP_403_FORBIDDEN


class ValidationFailed(ApplicationError):
    code = "invalid"
    status_code = status.HTTP_400_BAD_REQUEST


class Conflict(ApplicationError):
    code = "conflict"
    status_code = status.HTTP_409_CONFLICT


class PayloadTooLarge(ApplicationError):
    code = "payload_too_large"
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class Unprocessable(ApplicationError):
    code = "unprocessable"
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY


_DRF_CODES = {
    drf_exceptions.ParseError: "malformed_request",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "rate_limited",
    drf_exceptions.ValidationError: "invalid",
}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return Response(exc.as_dict(), status=exc.status_code, headers=headers)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"code": "payload_too_large", "message": "Request body is too large.", "details": {}},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, drf_exceptions.ValidationError):
        message = "Invalid input."
        details = exc.detail
    else:
        message = str(getattr(exc, "detail", exc))
        details = {}
    if isinstance(exc, drf_exceptions.Throttled) and exc.wait is not None:
        # Same number as the Retry-After header (DRF already rounds wait up).
        details = {"retry_after_seconds": math.ceil(exc.wait)}
    response.data = {"code": code, "message": message, "details": details}
    return response
