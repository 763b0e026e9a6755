"""The JSON parser every API view uses.

DRF's own parser reads the whole stream with no size cap (Django's
``DATA_UPLOAD_MAX_MEMORY_SIZE`` only guards ``request.body``/forms) and lets
some inputs through that PostgreSQL refuses later with a 500: NUL characters
and lone surrogates in strings (``jsonb`` rejects both) and nesting deep enough
to raise ``RecursionError``. This parser turns all of them into 4xx answers
before any view code runs.

JSON is UTF-8 (RFC 8259, section 8.1), and only UTF-8 is decoded. DRF's parser
decodes with whatever ``charset`` the client names, and Python's codec registry
holds more than text encodings: ``charset=bz2`` or ``zlib`` decompresses a few
kilobytes into gigabytes inside the web process, ``rot13`` and friends raise
odd errors (500). Any other charset answers 415 before a byte is decoded.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from typing import Any

from django.conf import settings
from django.utils.http import parse_header_parameters
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.parsers import BaseParser
from rest_framework.renderers import JSONRenderer

# jsonb stores neither U+0000 nor unpaired surrogates; reject them up front.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Deep enough for any real document, shallow enough for every recursive walker.
MAX_DEPTH = 64


def _reject_constant(value: str) -> None:
    raise ValueError(f"{value} is not valid JSON.")


def _finite_float(text: str) -> float:
    # json.loads turns 1e400 into inf without asking parse_constant; jsonb refuses it.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"Number {text[:40]} is out of range.")
    return value


def check_storable(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise ``ParseError`` if ``value`` nests too deep or holds unstorable text."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                raise ParseError("Strings must not contain NUL characters or unpaired surrogates.")
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise ParseError(f"JSON nests deeper than {max_depth} levels.")
            if isinstance(item, dict):
                for key, child in item.items():
                    if _UNSTORABLE.search(key):
                        raise ParseError("Keys must not contain NUL characters or unpaired surrogates.")
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def charset_check(media_type: str | None) -> None:
    """Raise ``UnsupportedMediaType`` (415) unless the declared charset, if any, is UTF-8."""
    if not media_type:
        return
    _, params = parse_header_parameters(media_type)
    charset = params.get("charset")
    if charset is None:
        return
    try:
        # Only the name is looked up; nothing is decoded with it.
        name = codecs.lookup(charset).name
    except LookupError:
        name = ""
    if name != "utf-8":
        raise UnsupportedMediaType(
            media_type[:100], detail=f"JSON must be UTF-8; charset {charset[:40]!r} is not supported."
        )


class JSONParser(BaseParser):
    media_type = "application/json"
    renderer_class = JSONRenderer

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        charset_check(media_type)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = b"" if stream is None else stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(raw) > limit:
            # Imported here: apps.common.exceptions imports rest_framework.views,
            # which imports this parser through the DRF settings.
            from apps.common.exceptions import PayloadTooLarge

            raise PayloadTooLarge("Request body is too large.", details={"max_bytes": limit})
        try:
            # Never parser_context["encoding"]: that is the client's charset (see above).
            text = raw.decode("utf-8")
            data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        except (ValueError, RecursionError) as exc:
            # RecursionError: a body of nothing but '[' is valid UTF-8 and 1 MB deep.
            raise ParseError(
                f"JSON parse error - {exc}" if isinstance(exc, ValueError) else "JSON nests too deep."
            ) from exc
        check_storable(data)
        return data
