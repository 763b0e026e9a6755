"""Admin for job runs, rollups and the activity counters. The beat schedule itself is edited under
"Periodic tasks" (django-celery-beat's admin): beat reads it from the database,
so a change there takes effect within a few seconds, without a deploy."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from apps.batch.models import DailySessionRollup, DailyUserRollup, JobRun, SessionActivity


def live_text(run: JobRun) -> str:
    """What the step reported last (``progress_detail``), as "; epoch 2/8, loss 1.2345, 3.1 s", or ""."""
    detail = run.progress_detail or {}
    if "total" not in detail:
        return ""
    parts = [f"{detail.get('unit', 'step')} {detail.get('done', 0)}/{detail['total']}"]
    if isinstance(detail.get("loss"), int | float):
        parts.append(f"loss {detail['loss']:.4f}")
    if isinstance(detail.get("elapsed_s"), int | float):
        parts.append(f"{detail['elapsed_s']:.1f} s")
    return "; " + ", ".join(parts)


@admin.register(JobRun)
class JobRunAdmin(admin.ModelAdmin):
    list_display = ("job_name", "status", "trigger", "progress", "resume_count", "started_at", "finished_at", "worker")
    list_filter = ("status", "job_name", "trigger")
    search_fields = ("job_name", "worker", "error")
    date_hierarchy = "started_at"
    readonly_fields = [f.name for f in JobRun._meta.fields]

    @admin.display(description="progress")
    def progress(self, obj: JobRun) -> str:
        return f"{obj.progress_done}/{obj.progress_total if obj.progress_total is not None else '?'}{live_text(obj)}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs are created by the runner (beat, run_job), never by hand


@admin.register(DailySessionRollup)
class DailySessionRollupAdmin(admin.ModelAdmin):
    list_display = ("day", "session", "events", "participants", "suggestions_shown", "suggestions_accepted")
    list_filter = ("day",)
    raw_id_fields = ("session",)


@admin.register(DailyUserRollup)
class DailyUserRollupAdmin(admin.ModelAdmin):
    list_display = ("day", "user", "events", "sessions", "suggestions_shown", "suggestions_accepted")
    list_filter = ("day",)
    raw_id_fields = ("user",)


@admin.register(SessionActivity)
class SessionActivityAdmin(admin.ModelAdmin):
    """Read-only: the ``activity`` subscriber owns these counters."""

    list_display = (
        "session_id",
        "events_total",
        "participants_joined",
        "participants_left",
        "suggestions_generated",
        "suggestions_accepted",
        "last_event_at",
    )
    search_fields = ("=session_id",)
    ordering = ("-last_event_at",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
