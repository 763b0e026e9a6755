"""OpenAPI generation details shared by every app.

``AutoSchema`` names components so that the HackSoft layout (a nested
``InputSerializer``/``OutputSerializer`` in every view) does not collide:
``SessionCreateApi.InputSerializer`` becomes ``SessionCreateApiInput``. A
module-level serializer keeps its short name unless another app already
claimed it with a different class; the later one is then prefixed with its
app (``AiError``), so the schema never silently merges two shapes.
"""

from __future__ import annotations

import threading
from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    """The body of every 4xx/5xx answer."""

    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.JSONField()


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """``responses={200: X, **error_responses(400, 404)}`` in ``extend_schema``."""
    return {code: OpenApiResponse(ErrorSerializer) for code in codes}


_claimed: dict[str, type] = {}
_lock = threading.Lock()


def _strip(name: str) -> str:
    return name.removesuffix("Serializer") or name


class AutoSchema(SpectacularAutoSchema):
    def get_serializer_name(self, serializer: Any, direction: Any) -> str:
        cls = serializer.__class__
        parts = cls.__qualname__.split(".")
        if "<locals>" in parts:  # built inside a function: fall back to the class name
            parts = [cls.__name__]
        name = "".join(_strip(part) for part in parts)
        with _lock:
            owner = _claimed.setdefault(name, cls)
            if owner is cls:
                return name
            app = cls.__module__.split(".")[1] if cls.__module__.startswith("apps.") else cls.__module__.split(".")[0]
            prefixed = f"{app.title().replace('_', '')}{name}"
            _claimed.setdefault(prefixed, cls)
            return prefixed
