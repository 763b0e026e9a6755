"""Structured JSON log lines with a correlation id that follows the work.

The correlation id lives in a ContextVar: set by the HTTP middleware / WebSocket
consumer from ``X-Correlation-ID`` (or a new one), carried in outbox rows and
task headers, and restored by the task base class, so one id ties a REST call
to the task it caused and the broadcast that came of it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from datetime import UTC, datetime

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "correlation_id"}


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def get_correlation_id() -> str | None:
    return correlation_id.get()


def set_correlation_id(value: str | None) -> contextvars.Token:
    return correlation_id.set(value)


# The HTTP header that carries it in and out (apps.ops.middleware).
HEADER = "X-Correlation-ID"
# Accept a caller's id only if it is short and plain: it ends up in every log
# line, so an arbitrary string would let a client forge or flood log fields.
# HAProxy's unique-id (docker/haproxy.cfg) uses hex digits, ':' and '_'.
# 64 is the width of every column that stores one (outbox rows, inference
# requests): a longer id passed this check and then failed the INSERT (500).
CORRELATION_ID_MAX_LENGTH = 64
_VALID_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{CORRELATION_ID_MAX_LENGTH}}}")


def correlation_id_accept(given: object) -> str:
    """``given`` if it is a safe correlation id, else a new one (HTTP header, WebSocket frame field).

    The one check of a caller's id: everything that stores or logs a correlation
    id gets it from here (or from ``new_correlation_id``), so it always fits.
    """
    return given if isinstance(given, str) and _VALID_ID.fullmatch(given) else new_correlation_id()


# A credential in a URL's query string (``?token=...``: old WebSocket clients).
_SECRET_IN_QUERY = re.compile(r"(?i)([?&](?:token|access_token|api_key)=)[^&\s\"'#]*")
REDACTED = "[redacted]"
# The server's own loggers: uvicorn logs every request line and WebSocket
# handshake with its full path, through handlers of its own (not Django's).
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "django.request", "django.channels.server")


def redact_secrets(text: str) -> str:
    return _SECRET_IN_QUERY.sub(lambda m: m.group(1) + REDACTED, text)


class SecretRedactionFilter(logging.Filter):
    """Rewrites query-string credentials out of a record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "=" in record.msg:
            record.msg = redact_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_secrets(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact_secrets(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


# Load balancers and orchestrators probe these every second or so: their access lines are noise.
_PROBE_PATHS = frozenset({"/healthz", "/readyz"})


class ProbeAccessFilter(logging.Filter):
    """Drops uvicorn's access lines for probe paths (HAProxy checks each server every second)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            return args[2].split("?", 1)[0] not in _PROBE_PATHS
        return True


def secret_redaction_install() -> None:
    """Put ``SecretRedactionFilter`` on the server's loggers and on every handler of the root logger.

    Logger filters see the records those loggers create (uvicorn's access and
    handshake lines); handler filters see everything that propagates to root.
    Also drops uvicorn's access lines for the probe paths (``ProbeAccessFilter``).
    Idempotent; called once per process from ``RealtimeConfig.ready``.
    """
    redaction = SecretRedactionFilter()
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in SERVER_LOGGERS]
    for logger in [logging.getLogger(), *targets]:
        targets.extend(getattr(logger, "handlers", []))
    for target in targets:
        if not any(isinstance(f, SecretRedactionFilter) for f in target.filters):
            target.addFilter(redaction)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, ProbeAccessFilter) for f in access.filters):
        access.addFilter(ProbeAccessFilter())


class CorrelationIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "correlation_id", None):
            record.correlation_id = correlation_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        cid = getattr(record, "correlation_id", None) or correlation_id.get()
        if cid:
            payload["correlation_id"] = cid
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)
