"""Admin for job runs and rollups. The beat schedule itself is edited under
"Periodic tasks" (django-celery-beat's admin): beat reads it from the database,
so a change there takes effect within a few seconds, without a deploy."""

from __future__ import annotations

from django.contrib import admin

from apps.batch.models import DailySessionRollup, DailyUserRollup, JobRun


@admin.register(JobRun)
class JobRunAdmin(admin.ModelAdmin):
    list_display = ("job_name", "status", "trigger", "progress", "resume_count", "started_at", "finished_at", "worker")
    list_filter = ("status", "job_name", "trigger")
    search_fields = ("job_name", "worker", "error")
    date_hierarchy = "started_at"
    readonly_fields = [f.name for f in JobRun._meta.fields]

    @admin.display(description="progress")
    def progress(self, obj: JobRun) -> str:
        return f"{obj.progress_done}/{obj.progress_total if obj.progress_total is not None else '?'}"

    def has_add_permission(self, request) -> bool:  # noqa: ANN001
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
