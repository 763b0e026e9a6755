"""What the fleet is doing now: running, prefetched and retry-scheduled tasks; paused queues; the audit.

Tasks come from Celery's ``inspect`` over the broker's control channel (each
worker answers from its memory) and from the delayed ledger (``delayed.py``):

- ``active``: running in a pool slot;
- ``reserved``: prefetched by a worker, waiting for a slot;
- ``scheduled``: held by a worker until its ETA (the last second or so of a countdown);
- ``delayed``: waiting out a countdown in RabbitMQ's delayed delivery (retries with backoff).

None of this touches a message: listing never consumes, delays or dead-letters a task.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import current_app

from apps.ops.fleet import delayed
from apps.ops.models import FleetAction, PausedQueue

logger = logging.getLogger(__name__)

INSPECT_TIMEOUT_S = 1.0
# Arguments are shown to operators cut to this many characters (a payload may be large).
ARGS_SHOWN_MAX = 500


class InspectUnavailable(Exception):
    """The broker did not answer the control broadcast."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= ARGS_SHOWN_MAX else text[: ARGS_SHOWN_MAX - 1] + "…"


def _task_row(request: dict[str, Any], *, state: str, worker: str, eta: Any = None) -> dict[str, Any]:
    info = request.get("delivery_info") or {}
    return {
        "id": request.get("id"),
        "name": request.get("name") or request.get("type"),
        "state": state,
        "worker": worker,
        "queue": delayed.queue_from_routing_key(info.get("routing_key") or "", info.get("exchange") or ""),
        "eta": eta,
        "retries": None,
        "started_at": request.get("time_start"),
        "args": _short(request.get("args")),
        "kwargs": _short(request.get("kwargs")),
    }


def fleet_tasks(*, timeout: float = INSPECT_TIMEOUT_S) -> dict[str, Any]:
    """Every task a worker holds (active, reserved, scheduled) and every one waiting out a countdown."""
    try:
        inspector = current_app.control.inspect(timeout=timeout)
        active = inspector.active() or {}
        # The nodes that answered once are all that will: the next two return as soon as they have.
        quick = current_app.control.inspect(timeout=timeout, limit=len(active) or None)
        reserved = quick.reserved() or {}
        scheduled = quick.scheduled() or {}
    except Exception as exc:
        logger.warning("celery inspect failed", exc_info=True)
        raise InspectUnavailable(str(exc)) from exc
    tasks: list[dict[str, Any]] = []
    for worker, requests in sorted(active.items()):
        tasks += [_task_row(r, state="active", worker=worker) for r in requests or []]
    for worker, requests in sorted(reserved.items()):
        tasks += [_task_row(r, state="reserved", worker=worker) for r in requests or []]
    for worker, entries in sorted(scheduled.items()):
        for entry in entries or []:
            tasks.append(_task_row(entry.get("request") or {}, state="scheduled", worker=worker, eta=entry.get("eta")))
    held = {t["id"] for t in tasks}
    try:
        waiting = delayed.delayed_entries()
    except Exception:
        logger.warning("delayed ledger unreadable", exc_info=True)
        waiting = []
    for entry in waiting:
        if entry["id"] in held:
            continue
        tasks.append(
            {
                "id": entry["id"],
                "name": entry["name"],
                "state": "delayed",
                "worker": None,
                "queue": entry["queue"],
                "eta": datetime.fromtimestamp(entry["eta"], tz=UTC).isoformat(),
                "retries": entry["retries"],
                "started_at": None,
                "args": None,
                "kwargs": None,
            }
        )
    return {"workers": sorted(set(active) | set(reserved) | set(scheduled)), "tasks": tasks}


def paused_queue_list() -> list[PausedQueue]:
    return list(PausedQueue.objects.select_related("paused_by"))


def fleet_action_list(*, limit: int = 50) -> list[FleetAction]:
    return list(FleetAction.objects.select_related("requested_by")[:limit])
