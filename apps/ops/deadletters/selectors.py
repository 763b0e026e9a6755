"""Reads of the ops app: dead letters and canary runs."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Prefetch, QuerySet

from apps.common.exceptions import NotFound
from apps.ops.models import CanaryRun, DeadLetter, DeadLetterReplay

DEAD_LETTER_FILTERS = ("queue", "task_name", "reason", "fingerprint", "status", "task_id")


def dead_letter_list(*, filters: dict[str, Any] | None = None) -> QuerySet[DeadLetter]:
    """Dead letters, newest first, filtered by exact ``queue``, ``task_name``, ``reason``, ``fingerprint``..."""
    queryset = DeadLetter.objects.all().prefetch_related(
        Prefetch("replays", queryset=DeadLetterReplay.objects.select_related("requested_by").order_by("-created_at"))
    )
    for key in DEAD_LETTER_FILTERS:
        value = (filters or {}).get(key)
        if value not in (None, ""):
            queryset = queryset.filter(**{key: value})
    return queryset.order_by("-created_at")


def dead_letter_counts_by_reason() -> dict[tuple[str, str], int]:
    """Stored dead letters counted by ``(queue, reason)``: what the fleet report and the DLQ gauges show."""
    rows = DeadLetter.objects.values("queue", "reason").annotate(n=Count("id")).order_by()
    return {(str(r["queue"]), str(r["reason"])): int(r["n"]) for r in rows}


def dead_letter_get(*, dead_letter_id: Any) -> DeadLetter:
    dead_letter = dead_letter_list().filter(id=dead_letter_id).first()
    if dead_letter is None:
        raise NotFound("Dead letter not found.", details={"id": str(dead_letter_id)})
    return dead_letter


def canary_run_get(*, canary_id: Any) -> CanaryRun:
    run = CanaryRun.objects.filter(id=canary_id).first()
    if run is None:
        raise NotFound("Canary run not found.", details={"id": str(canary_id)})
    return run


def canary_dead_letter(*, run: CanaryRun) -> DeadLetter | None:
    if not run.task_id:
        return None
    return DeadLetter.objects.filter(task_id=run.task_id).order_by("-created_at").first()
