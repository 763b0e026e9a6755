"""The ledger of tasks waiting out a countdown (retries with backoff, ``apply_async(countdown=...)``).

Why a ledger: our queues are quorum queues, so Celery sends a message with an
ETA or countdown through RabbitMQ's native delayed delivery (the
``celery_delayed_*`` queues, one per power of two of seconds) instead of a
worker holding it in memory. While it waits there no worker knows about it
(``inspect scheduled`` shows only the last second or so), and reading it back
from those queues would mean consuming it. So every process records what it
publishes with an ETA here (``before_task_publish``, one Redis ``HSET`` for
delayed messages only), and a worker forgets the entry when the task starts
(``task_prerun``, only for requests that carried an ETA) or is revoked.

Entries are JSON under one Redis hash per deployment (``<prefix>:ops:delayed``);
one whose ETA is more than :data:`STALE_AFTER_S` past is dropped when read (its
task ran on a worker that died before reporting, or its message was purged).
Nothing here touches a message: listing never consumes, delays or dead-letters one.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import Any

from django.conf import settings

from apps.ops.fleet.figures import _shared_redis

logger = logging.getLogger(__name__)

# Celery's native delayed delivery: the exchange and the number of bit levels in
# its routing keys ("1.0.1...0.<original routing key>", see kombu.transport.native_delayed_delivery).
DELAYED_EXCHANGE = "celery_delayed_27"
DELAY_LEVELS = 28
# An entry this long past its ETA is dropped when read: the task would have started by now.
STALE_AFTER_S = 300.0


def _key() -> str:
    return f"{settings.REDIS_KEY_PREFIX}:ops:delayed"


def queue_from_routing_key(routing_key: str, exchange: str = "") -> str:
    """The work queue a message is routed to, undoing native delayed delivery's bit prefix."""
    if exchange == DELAYED_EXCHANGE or routing_key.count(".") >= DELAY_LEVELS:
        parts = routing_key.split(".")
        if len(parts) > DELAY_LEVELS and all(p in ("0", "1") for p in parts[:DELAY_LEVELS]):
            return ".".join(parts[DELAY_LEVELS:])
    return routing_key


def _eta_epoch(eta: Any) -> float | None:
    if not eta:
        return None
    if isinstance(eta, datetime):
        return eta.timestamp()
    try:
        return datetime.fromisoformat(str(eta)).timestamp()
    except ValueError:
        return None


def delayed_record(*, headers: dict[str, Any], exchange: str, routing_key: str) -> None:
    """A task was published with an ETA (``before_task_publish``): remember it until it starts."""
    eta = _eta_epoch(headers.get("eta"))
    task_id = headers.get("id")
    if eta is None or not task_id:
        return
    entry = {
        "id": task_id,
        "name": headers.get("task", ""),
        "queue": queue_from_routing_key(routing_key or "", exchange or ""),
        "eta": eta,
        "retries": int(headers.get("retries") or 0),
        "published_at": time.time(),
    }
    try:
        _shared_redis().hset(_key(), task_id, json.dumps(entry))
    except Exception:  # observability must never fail a publish
        logger.warning("delayed ledger: could not record %s", task_id, exc_info=True)


def delayed_forget(*task_ids: str) -> None:
    """The task started, was revoked or purged: it no longer waits."""
    ids = [t for t in task_ids if t]
    if not ids:
        return
    try:
        _shared_redis().hdel(_key(), *ids)
    except Exception:
        logger.warning("delayed ledger: could not forget %s", ids, exc_info=True)


def delayed_forget_queue(queue: str) -> None:
    """A purge emptied ``queue``: its entries that were due already are gone with it."""
    now = time.time()
    stale = [
        entry["id"] for entry in delayed_entries(include_stale=True) if entry["queue"] == queue and entry["eta"] <= now
    ]
    delayed_forget(*stale)


def delayed_entries(*, include_stale: bool = False, now: float | None = None) -> list[dict[str, Any]]:
    """Every task waiting out a countdown, soonest first (stale entries are dropped unless asked for)."""
    now = time.time() if now is None else now
    raw = _shared_redis().hgetall(_key())
    entries, stale = [], []
    for task_id, value in raw.items():
        try:
            entry = json.loads(value)
        except ValueError:
            stale.append(task_id)
            continue
        if not include_stale and float(entry.get("eta") or 0) + STALE_AFTER_S < now:
            stale.append(task_id)
            continue
        entries.append(entry)
    if stale:
        _shared_redis().hdel(_key(), *stale)
    return sorted(entries, key=lambda e: e["eta"])
