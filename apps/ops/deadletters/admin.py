"""Admin for dead letters (list, filters, payload and traceback, replay/discard actions) and canary runs.

Dead letters are read-only: what the broker handed over is evidence. The
actions go through the same services as the REST API, so replays are audited
and idempotent here too, and need the same ``ops.change_deadletter`` permission.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from apps.common.exceptions import ApplicationError
from apps.ops.deadletters import services
from apps.ops.models import CanaryRun, DeadLetter, DeadLetterReplay, ReplayStatus, TaskFailure


def _pre(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True, default=str)
    return format_html('<pre style="white-space: pre-wrap; max-width: 100em">{}</pre>', text)


class DeadLetterReplayInline(admin.TabularInline):
    model = DeadLetterReplay
    fk_name = "dead_letter"
    extra = 0
    can_delete = False
    fields = ("created_at", "requested_by", "forced", "status", "new_task_id", "finished_at", "error")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "queue",
        "task_name",
        "reason",
        "exception_class",
        "attempts",
        "status",
        "short_fingerprint",
    )
    list_filter = ("queue", "task_name", "reason", "status", "fingerprint")
    search_fields = ("task_id", "task_name", "fingerprint", "exception_class", "exception_message", "correlation_id")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    actions = ("replay_selected", "force_replay_selected", "discard_selected")
    inlines = (DeadLetterReplayInline,)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "queue",
                    "dead_letter_queue",
                    "task_name",
                    "task_id",
                    "correlation_id",
                    "reason",
                    "status",
                    "attempts",
                    "fingerprint",
                    "first_failed_at",
                    "last_failed_at",
                    "replay_of",
                )
            },
        ),
        ("Failure", {"fields": ("exception_class", "exception_message", "traceback_display")}),
        (
            "Payload",
            {
                "fields": (
                    "args_display",
                    "kwargs_display",
                    "raw_body",
                    "headers_display",
                    "x_death_display",
                    "properties_display",
                )
            },
        ),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in DeadLetter._meta.fields] + [
            "traceback_display",
            "args_display",
            "kwargs_display",
            "headers_display",
            "x_death_display",
            "properties_display",
        ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="fingerprint")
    def short_fingerprint(self, obj: DeadLetter) -> str:
        return obj.fingerprint[:12]

    @admin.display(description="traceback")
    def traceback_display(self, obj: DeadLetter) -> str:
        return _pre(obj.traceback or "(not known)")

    @admin.display(description="args")
    def args_display(self, obj: DeadLetter) -> str:
        return _pre(obj.args)

    @admin.display(description="kwargs")
    def kwargs_display(self, obj: DeadLetter) -> str:
        return _pre(obj.kwargs)

    @admin.display(description="headers")
    def headers_display(self, obj: DeadLetter) -> str:
        return _pre(obj.headers)

    @admin.display(description="x-death")
    def x_death_display(self, obj: DeadLetter) -> str:
        return _pre(obj.x_death)

    @admin.display(description="properties")
    def properties_display(self, obj: DeadLetter) -> str:
        return _pre(obj.properties)

    def _replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter], *, force: bool) -> None:
        done, refused, failed = 0, 0, 0
        for dead_letter in queryset:
            try:
                replay = services.dead_letter_replay(dead_letter_id=dead_letter.id, user=request.user, force=force)
            except ApplicationError:
                refused += 1
                continue
            if replay.status == ReplayStatus.PUBLISH_FAILED:
                failed += 1
            else:
                done += 1
        self.message_user(
            request,
            f"Replayed {done}; skipped {refused} already replayed or discarded; {failed} could not be published.",
            messages.WARNING if (refused or failed) else messages.SUCCESS,
        )

    @admin.action(description="Replay selected dead letters (once)", permissions=["change"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        self._replay(request, queryset, force=False)

    @admin.action(description="Replay selected dead letters again (force)", permissions=["change"])
    def force_replay_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        self._replay(request, queryset, force=True)

    @admin.action(description="Discard selected dead letters", permissions=["change"])
    def discard_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        for dead_letter in queryset:
            services.dead_letter_discard(dead_letter_id=dead_letter.id, user=request.user)
        self.message_user(request, f"Discarded {queryset.count()} dead letters.", messages.SUCCESS)


@admin.register(CanaryRun)
class CanaryRunAdmin(admin.ModelAdmin):
    list_display = ("created_at", "mode", "status", "attempts", "task_id", "finished_at")
    list_filter = ("mode", "status")
    search_fields = ("task_id",)
    readonly_fields = ("mode", "status", "task_id", "requested_by", "attempts", "started_at", "finished_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(TaskFailure)
class TaskFailureAdmin(admin.ModelAdmin):
    list_display = ("created_at", "task_name", "queue", "reason", "exception_class", "attempts")
    list_filter = ("queue", "reason")
    search_fields = ("task_id", "task_name", "exception_class")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in TaskFailure._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
