"""``Idempotency-Key`` for writes: run once, answer every repeat the same way.

A key is owned by the request holding it, for as long as that request lives:

- The holder first takes a PostgreSQL advisory lock on (user, key), on its own
  database connection (session level), and keeps it until its work has
  committed or rolled back. A second request with the key that cannot take
  the lock gets 409 ``idempotency_key_in_progress`` (or the stored response,
  once there is one), however long the first one runs: a slow request is never
  run twice.
- The key row is committed as ``in_progress`` *before* the work, in its own
  transaction, so the unique (user, key) constraint backs the lock. The work
  and the row's completion (with the response to replay) then commit in ONE
  transaction, which first re-locks the row and checks it is still the one it
  claimed (its ``updated_at`` is the claim's fence): either both happen or
  neither does, so a stored response always describes writes that really exist.
  If the work fails, the row is deleted (only if still this claim's) and the
  client may retry.
- A row left ``in_progress`` is taken over only when its holder is provably
  gone: nobody holds the advisory lock (PostgreSQL drops it when the holder's
  connection ends: a crash, a kill, a lost network) *and* the row is older than
  ``IDEMPOTENCY_LOCK_TIMEOUT_S`` (5 s; a margin for a row written without the
  lock, which no current release does: a client retrying after a crash waits
  that long, so it is short). The lock and the work
  share one connection, so a holder whose lock is gone cannot commit its work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from apps.common.exceptions import Conflict, Unprocessable, ValidationFailed
from apps.context.models import IdempotencyKey

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
# First half of the two-int advisory lock key (ASCII "IDMP"): apart from the job
# framework's "JOBS" and beat's "BEAT" locks.
ADVISORY_NAMESPACE = 0x49444D50
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


def advisory_lock_key(*, user_id: Any, key: str) -> int:
    """The second half of the key's advisory lock: a signed int4 from (user, key).

    Two keys sharing it (one in four billion) only make one wait for the other.
    """
    value = zlib.crc32(f"{user_id}:{key}".encode())
    return value - 2**32 if value >= 2**31 else value


def _let_go(*, user_id: Any, key: str) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_unlock(%s, %s)", [ADVISORY_NAMESPACE, advisory_lock_key(user_id=user_id, key=key)]
            )
    except Exception:  # a dead connection has dropped the lock already
        logger.warning("idempotency advisory unlock failed", exc_info=True)


def _in_progress() -> Conflict:
    return Conflict(
        f"A request with this {HEADER} is still being processed; retry later.",
        code="idempotency_key_in_progress",
        details={"header": HEADER},
    )


def _held_elsewhere(*, user: AbstractBaseUser, key: str, fingerprint: str) -> IdempotentResponse:
    """Another live request holds the key: its stored answer if it has one, else 409 (422 for another body)."""
    existing = IdempotencyKey.objects.filter(user_id=user.pk, key=key).first()
    if existing is not None and existing.request_hash != fingerprint:
        raise _reused()
    if existing is not None and existing.status == IdempotencyKey.Status.COMPLETED:
        return IdempotentResponse(status=existing.response_status or 200, body=existing.response_body, replayed=True)
    raise _in_progress()


def _reused() -> Unprocessable:
    return Unprocessable(
        f"This {HEADER} was already used with a different request.",
        code="idempotency_key_reused",
        details={"header": HEADER},
    )


def _claim(*, user: AbstractBaseUser, key: str, scope: str, fingerprint: str) -> IdempotencyKey | IdempotentResponse:
    """Create the in-progress row, or explain why the request must not run (the caller holds the key's lock)."""
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
            raise _reused()
        if existing.status == IdempotencyKey.Status.COMPLETED:
            return IdempotentResponse(
                status=existing.response_status or 200, body=existing.response_body, replayed=True
            )
        if existing.updated_at < now - _lock_timeout():
            # In progress, yet nobody holds its lock (we do): its holder is gone. Take
            # it over; the new updated_at fences out anything the old holder still tries.
            taken = IdempotencyKey.objects.filter(pk=existing.pk, updated_at=existing.updated_at).update(updated_at=now)
            if taken:
                existing.updated_at = now
                return existing
        raise _in_progress()
    raise Conflict(f"Could not claim this {HEADER}; retry.", code="idempotency_key_in_progress")


# The key's advisory lock and the in-progress row in one round trip (autocommitted
# at the top level, so the row is committed before the work): the INSERT runs
# only once the lock is ours, and a row already there (a repeat, a holder gone)
# leaves the INSERT empty for ``_claim`` to explain.
_HOLD_AND_CLAIM_SQL = """
WITH l AS (SELECT pg_try_advisory_lock(%(ns)s, %(lock)s) AS held),
claimed AS (
    INSERT INTO {table} (id, created_at, updated_at, user_id, key, scope, request_hash, status)
    SELECT %(id)s, %(now)s, %(now)s, %(uid)s, %(key)s, %(scope)s, %(hash)s, %(status)s FROM l WHERE l.held
    ON CONFLICT (user_id, key) DO NOTHING
    RETURNING id
)
SELECT l.held, (SELECT id FROM claimed) FROM l
"""


def _hold_and_claim(
    *, user: AbstractBaseUser, key: str, scope: str, fingerprint: str
) -> tuple[bool, IdempotencyKey | None]:
    """Take the key's lock and, if it is ours and the key new, its in-progress row: (held, row or None)."""
    now = timezone.now()
    row = IdempotencyKey(
        id=uuid.uuid4(), user_id=user.pk, key=key, scope=scope, request_hash=fingerprint, created_at=now, updated_at=now
    )
    params = {
        "ns": ADVISORY_NAMESPACE,
        "lock": advisory_lock_key(user_id=user.pk, key=key),
        "id": row.id,
        "now": now,
        "uid": user.pk,
        "key": key,
        "scope": scope,
        "hash": fingerprint,
        "status": IdempotencyKey.Status.IN_PROGRESS.value,
    }
    with connection.cursor() as cursor:
        cursor.execute(_HOLD_AND_CLAIM_SQL.format(table=IdempotencyKey._meta.db_table), params)
        held, claimed_id = cursor.fetchone()
    if not held or claimed_id is None:
        return bool(held), None
    row._state.adding = False
    row._state.db = connection.alias
    return True, row


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
    fingerprint = request_fingerprint(scope=scope, payload=payload)
    held, claimed = _hold_and_claim(user=user, key=key, scope=scope, fingerprint=fingerprint)
    if not held:
        return _held_elsewhere(user=user, key=key, fingerprint=fingerprint)
    try:
        return _run_owned(user=user, key=key, scope=scope, fingerprint=fingerprint, work=work, claimed=claimed)
    finally:
        _let_go(user_id=user.pk, key=key)


def _run_owned(
    *,
    user: AbstractBaseUser,
    key: str,
    scope: str,
    fingerprint: str,
    work: Callable[[], tuple[int, Any]],
    claimed: IdempotencyKey | None = None,
) -> IdempotentResponse:
    """Claim (unless ``claimed`` already) and run, holding the key's advisory lock."""
    if claimed is None:
        outcome = _claim(user=user, key=key, scope=scope, fingerprint=fingerprint)
        if isinstance(outcome, IdempotentResponse):
            return outcome
        claimed = outcome
    mine = IdempotencyKey.objects.filter(
        pk=claimed.pk, updated_at=claimed.updated_at, status=IdempotencyKey.Status.IN_PROGRESS
    )
    try:
        with transaction.atomic():
            status, body = work()
            # Completed only if still our claim (its updated_at is the fence: nobody took
            # it over); otherwise the work rolls back with it. The UPDATE locks the row
            # until this commits.
            completed = mine.update(
                status=IdempotencyKey.Status.COMPLETED,
                response_status=status,
                response_body=body,
                updated_at=timezone.now(),
            )
            if not completed:
                raise _in_progress()
    except BaseException:
        # Nothing was written (the work rolled back): free the key so a retry runs,
        # unless it is no longer ours.
        mine.delete()
        raise
    return IdempotentResponse(status=status, body=body, replayed=False)


def idempotency_key_purge(*, older_than: timedelta | None = None) -> int:
    """Delete keys past their retention (a maintenance job may call this)."""
    cutoff = timezone.now() - (older_than if older_than is not None else _ttl())
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted
