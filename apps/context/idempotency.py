"""``Idempotency-Key`` for writes: run once, answer every repeat the same way.

The key row is committed as ``in_progress`` *before* the work, in its own
transaction, so a concurrent request with the same key hits the unique
(user, key) constraint and gets 409 instead of doing the work twice. The work
and the row's completion (with the response to replay) then commit in ONE
transaction: either both happen or neither does, so a stored response always
describes writes that really exist. If the work fails, the row is deleted and
the client may retry. A row left ``in_progress`` by a crashed process is taken
over once it is older than ``IDEMPOTENCY_LOCK_TIMEOUT_S``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.common.exceptions import Conflict, Unprocessable, ValidationFailed
from apps.context.models import IdempotencyKey

HEADER = "Idempotency-Key"
# Printable ASCII, as in the IETF httpapi idempotency-key draft; bounded by the column.
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


def _lock_timeout() -> timedelta:
    return timedelta(seconds=settings.IDEMPOTENCY_LOCK_TIMEOUT_S)


def _ttl() -> timedelta:
    return timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_S)


@dataclass(frozen=True)
class IdempotentResponse:
    status: int
    body: Any
    replayed: bool


def request_fingerprint(*, scope: str, payload: Any) -> str:
    canonical = json.dumps({"scope": scope, "body": payload}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise ValidationFailed(
            f"{HEADER} must be 1-255 printable ASCII characters.",
            code="invalid_idempotency_key",
            details={"header": HEADER},
        )
    return key


def _claim(*, user: AbstractBaseUser, key: str, scope: str, fingerprint: str) -> IdempotencyKey | IdempotentResponse:
    """Create the in-progress row, or explain why the request must not run."""
    for _ in range(3):
        try:
            with transaction.atomic():
                return IdempotencyKey.objects.create(user=user, key=key, scope=scope, request_hash=fingerprint)
        except IntegrityError:
            pass
        existing = IdempotencyKey.objects.filter(user=user, key=key).first()
        if existing is None:
            continue  # deleted by a failed first attempt a moment ago: claim it again
        now = timezone.now()
        if existing.created_at < now - _ttl():
            IdempotencyKey.objects.filter(pk=existing.pk, updated_at=existing.updated_at).delete()
            continue
        if existing.request_hash != fingerprint:
            raise Unprocessable(
                f"This {HEADER} was already used with a different request.",
                code="idempotency_key_reused",
                details={"header": HEADER},
            )
        if existing.status == IdempotencyKey.Status.COMPLETED:
            return IdempotentResponse(
                status=existing.response_status or 200, body=existing.response_body, replayed=True
            )
        if existing.updated_at < now - _lock_timeout():
            # Abandoned by a crashed request: take it over, but only one taker wins.
            taken = IdempotencyKey.objects.filter(pk=existing.pk, updated_at=existing.updated_at).update(updated_at=now)
            if taken:
                existing.updated_at = now
                return existing
        raise Conflict(
            f"A request with this {HEADER} is still being processed; retry later.",
            code="idempotency_key_in_progress",
            details={"header": HEADER},
        )
    raise Conflict(f"Could not claim this {HEADER}; retry.", code="idempotency_key_in_progress")


def idempotent_call(
    *,
    user: AbstractBaseUser,
    key: str | None,
    scope: str,
    payload: Any,
    work: Callable[[], tuple[int, Any]],
) -> IdempotentResponse:
    """Run ``work`` (returning ``(status, body)``) at most once per (user, key)."""
    if key is None:
        status, body = work()
        return IdempotentResponse(status=status, body=body, replayed=False)
    validate_key(key)
    claimed = _claim(user=user, key=key, scope=scope, fingerprint=request_fingerprint(scope=scope, payload=payload))
    if isinstance(claimed, IdempotentResponse):
        return claimed
    try:
        with transaction.atomic():
            status, body = work()
            IdempotencyKey.objects.filter(pk=claimed.pk).update(
                status=IdempotencyKey.Status.COMPLETED,
                response_status=status,
                response_body=body,
                updated_at=timezone.now(),
            )
    except BaseException:
        # Nothing was written (the work rolled back): free the key so a retry runs.
        IdempotencyKey.objects.filter(pk=claimed.pk, status=IdempotencyKey.Status.IN_PROGRESS).delete()
        raise
    return IdempotentResponse(status=status, body=body, replayed=False)


def idempotency_key_purge(*, older_than: timedelta | None = None) -> int:
    """Delete keys past their retention (a maintenance job may call this)."""
    cutoff = timezone.now() - (older_than if older_than is not None else _ttl())
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted
