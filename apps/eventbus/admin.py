"""Admin for the outbox (parked rows first of all) and processed events.

Outbox rows are read-only: editing a committed message would publish
something no transaction wrote. Operators requeue parked rows (after fixing
the cause, e.g. declaring the missing queue) with the admin action.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.eventbus import services
from apps.eventbus.models import OutboxMessage, ProcessedEvent


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(OutboxMessage)
class OutboxMessageAdmin(_ReadOnly):
    list_display = ("id", "kind", "routing_key", "status", "attempts", "created_at", "published_at", "short_error")
    list_filter = ("status", "kind", "routing_key")
    search_fields = ("=message_id", "=correlation_id", "routing_key")
    readonly_fields = (
        "id",
        "message_id",
        "kind",
        "exchange",
        "routing_key",
        "headers",
        "body",
        "correlation_id",
        "status",
        "attempts",
        "last_error",
        "created_at",
        "available_at",
        "published_at",
    )
    ordering = ("-id",)
    actions = ("requeue_parked",)
    list_per_page = 100
    show_full_result_count = False  # the table is large; COUNT(*) on every page is not worth it

    @admin.display(description="last error")
    def short_error(self, obj: OutboxMessage) -> str:
        return obj.last_error[:80]

    @admin.action(description="Requeue selected parked rows (attempts reset)")
    def requeue_parked(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        count = services.outbox_rows_requeue(ids=queryset.values_list("id", flat=True))
        self.message_user(request, f"{count} parked row(s) requeued.", messages.SUCCESS)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a pending row would silently drop a committed event.
        return obj is not None and obj.status == OutboxMessage.Status.PARKED and request.user.is_superuser


@admin.register(ProcessedEvent)
class ProcessedEventAdmin(_ReadOnly):
    list_display = ("subscriber", "event_id", "event_type", "processed_at")
    list_filter = ("subscriber", "event_type")
    search_fields = ("=event_id",)
    show_full_result_count = False
