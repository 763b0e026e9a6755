"""The one check of an appended event's fields, shared by the REST append and the WebSocket frame.

``context_event_append`` runs ``event_data_check`` on every event, whatever
edge it came from, and the WebSocket consumer builds its ``EventInput`` with
``event_input_from_frame`` (the REST view uses its serializer for the shape,
then the same service check). What is refused, and why:

- NUL characters and lone surrogates, in keys or strings: PostgreSQL's
  ``jsonb`` stores neither (a DB error, which on a socket used to close 1011);
- NaN and +-Infinity: not JSON (RFC 8259); ``jsonb`` and the subscribers'
  parsers refuse them, so each such event became dead letters downstream;
- nesting deeper than ``EVENT_DATA_MAX_DEPTH`` (32): the event travels inside
  the outbox envelope (3 more levels) and the subscribers' pydantic parse
  refuses documents somewhere past 128 levels (measured: 127 parses, 200 does
  not), so a deep event made one dead letter per subscriber;
- more than ``EVENT_DATA_MAX_BYTES`` of UTF-8 once encoded compactly.

Every refusal is a ``ValidationFailed`` (REST 400, WebSocket ``error`` frame);
nothing reaches the database.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, cast

from django.conf import settings

from apps.common.exceptions import ValidationFailed

EVENT_TYPES = ("context_update", "user_action", "note")
CLIENT_MSG_ID_MAX = 64
EVENT_DATA_MAX_DEPTH = 32

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _refuse(message: str, *, code: str = "invalid", index: int | None = None, **details: Any) -> ValidationFailed:
    where = {} if index is None else {"index": index}
    return ValidationFailed(message, code=code, details={**where, **details})


def event_data_check(data: Any, *, index: int | None = None) -> None:
    """Raise ``ValidationFailed`` unless ``data`` is a storable JSON object within the limits."""
    if not isinstance(data, dict):
        raise _refuse("Event data must be an object.", index=index, data=["Must be an object."])
    # Iterative walk: a recursive one (or json.dumps) would hit RecursionError first.
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                raise _refuse(
                    "Strings must not contain NUL characters or unpaired surrogates.",
                    index=index,
                    data=["Contains a NUL character or an unpaired surrogate."],
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise _refuse("NaN and Infinity are not JSON numbers.", index=index, data=["Non-finite number."])
        elif isinstance(item, dict | list):
            if depth > EVENT_DATA_MAX_DEPTH:
                raise _refuse(
                    f"Event data nests deeper than {EVENT_DATA_MAX_DEPTH} levels.",
                    index=index,
                    data=[f"At most {EVENT_DATA_MAX_DEPTH} levels of nesting."],
                    max_depth=EVENT_DATA_MAX_DEPTH,
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str) or _UNSTORABLE.search(key):
                        raise _refuse(
                            "Keys must be strings without NUL characters or unpaired surrogates.",
                            index=index,
                            data=["Invalid key."],
                        )
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        elif not (item is None or isinstance(item, bool | int)):
            raise _refuse("Event data must be plain JSON.", index=index, data=[f"Unsupported {type(item).__name__}."])
    size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8"))
    if size > settings.EVENT_DATA_MAX_BYTES:
        raise _refuse(
            "Event data is too large.",
            code="event_too_large",
            index=index,
            max_bytes=settings.EVENT_DATA_MAX_BYTES,
            bytes=size,
        )


def client_msg_id_check(value: Any, *, index: int | None = None) -> str:
    """The client's message id: a string of at most 64 plain characters ("" for none)."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > CLIENT_MSG_ID_MAX or _UNSTORABLE.search(value):
        raise _refuse(
            "Invalid client_msg_id.",
            index=index,
            client_msg_id=[f"Must be a string of at most {CLIENT_MSG_ID_MAX} characters, without NUL."],
        )
    return value


def event_input_from_frame(frame: Mapping[str, Any]) -> tuple[str, dict[str, Any], str]:
    """``(event_type, data, client_msg_id)`` of a WebSocket ``context_update`` frame, checked."""
    event_type = frame.get("event_type", "context_update")
    if event_type not in EVENT_TYPES:
        raise _refuse("Invalid context_update.", event_type=[f"Must be one of {list(EVENT_TYPES)}."])
    client_msg_id = client_msg_id_check(frame.get("client_msg_id", ""))
    data = frame.get("data")
    event_data_check(data)  # raises unless data is a dict
    return str(event_type), cast(dict[str, Any], data), client_msg_id
