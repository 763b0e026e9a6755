"""Serializer building blocks for strict API input."""

from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers


class StrictSerializer(serializers.Serializer):
    """Rejects keys it does not declare, so a typo is an error, not a silent no-op."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)


class JSONObjectField(serializers.DictField):
    """A JSON object (never a list or scalar), bounded in encoded size."""

    def __init__(self, *, max_bytes: int | None = None, **kwargs: Any) -> None:
        self.max_bytes = max_bytes
        super().__init__(child=serializers.JSONField(), **kwargs)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        value = super().to_internal_value(data)
        if self.max_bytes is not None:
            size = len(json.dumps(value, separators=(",", ":")))
            if size > self.max_bytes:
                raise serializers.ValidationError(f"At most {self.max_bytes} bytes of JSON; got {size}.")
        return value
