"""Admin for sessions, participants, events, preferences and idempotency keys.

``seq`` is never editable: it is handed out by ``context_event_append`` under
the session row lock, and an admin edit would break the gap-free order.
Events are therefore read-only here; write them through the API.

Edits of sessions and participants go through the services, as the API's do:
the outbox events are written, the caches invalidated, open sockets told
(``session`` frames) and a removed participant's sockets closed (4404).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from apps.context import services
from apps.context.models import ContextEvent, IdempotencyKey, Participant, Session, UserPreference


class ParticipantInline(admin.TabularInline):
    model = Participant
    extra = 0
    fields = ("user", "role", "joined_at", "left_at")
    readonly_fields = ("joined_at",)
    autocomplete_fields = ("user",)


class ContextEventInline(admin.TabularInline):
    model = ContextEvent
    extra = 0
    fields = ("seq", "event_type", "author", "client_msg_id", "data", "created_at")
    readonly_fields = fields
    ordering = ("-seq",)
    # A long session has thousands of events; the inline shows the newest ones
    # (all of them: the events admin lists and searches every event).
    recent = 50

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        # Django builds the formset before it asks for the queryset; remember the
        # session's last seq so get_queryset can bound the rows it loads.
        request._context_event_min_seq = (obj.last_seq - self.recent) if obj is not None else 0
        return super().get_formset(request, obj, **kwargs)

    def get_queryset(self, request: HttpRequest) -> Any:
        min_seq = getattr(request, "_context_event_min_seq", 0)
        return super().get_queryset(request).filter(seq__gt=min_seq).select_related("author")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("title", "owner", "state", "last_seq", "last_activity_at", "created_at")
    list_filter = ("state", "created_at", "last_activity_at")
    search_fields = ("title", "=id", "owner__username")
    readonly_fields = ("id", "last_seq", "created_at", "updated_at", "last_activity_at", "closed_at")
    autocomplete_fields = ("owner",)
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    inlines = [ParticipantInline, ContextEventInline]

    def save_model(self, request: HttpRequest, obj: Session, form: Any, change: bool) -> None:
        if change:
            services.session_save_by_admin(session=obj, changed_fields=form.changed_data)
        else:
            super().save_model(request, obj, form, change)

    def delete_model(self, request: HttpRequest, obj: Session) -> None:
        services.session_delete_by_admin(session_id=obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for session_id in list(queryset.values_list("pk", flat=True)):
            services.session_delete_by_admin(session_id=session_id)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not Participant:
            return super().save_formset(request, form, formset, change)
        instances = formset.save(commit=False)
        for removed in formset.deleted_objects:
            services.participant_evict(participant_id=removed.pk, actor=request.user)
        for participant in instances:
            _participant_save(participant)
        formset.save_m2m()
        return None


def _participant_save(participant: Participant) -> None:
    """An admin edit of one participant row: ``left_at`` set means removed (through the service)."""
    if participant.pk is not None and participant.left_at is not None:
        was_active = Participant.objects.filter(pk=participant.pk, left_at__isnull=True).exists()
        if was_active:
            services.participant_evict(participant_id=participant.pk)
            return
    participant.save()
    services.participant_caches_invalidate(session_id=participant.session_id)


@admin.register(Participant)
class ParticipantAdmin(admin.ModelAdmin):
    list_display = ("user", "session", "role", "joined_at", "left_at")
    list_filter = ("role", ("left_at", admin.EmptyFieldListFilter))
    search_fields = ("user__username", "session__title", "=session__id")
    autocomplete_fields = ("user", "session")
    list_select_related = ("user", "session")

    def save_model(self, request: HttpRequest, obj: Participant, form: Any, change: bool) -> None:
        _participant_save(obj)

    def delete_model(self, request: HttpRequest, obj: Participant) -> None:
        services.participant_evict(participant_id=obj.pk, actor=request.user)
        # The row goes too, as the admin asked; its leaving was recorded first.
        Participant.objects.filter(pk=obj.pk).delete()
        services.participant_caches_invalidate(session_id=obj.session_id)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for participant in list(queryset):
            self.delete_model(request, participant)


@admin.register(ContextEvent)
class ContextEventAdmin(admin.ModelAdmin):
    list_display = ("session", "seq", "event_type", "author", "client_msg_id", "created_at")
    list_filter = ("event_type", "created_at")
    search_fields = ("=session__id", "session__title", "author__username", "client_msg_id")
    list_select_related = ("session", "author")
    readonly_fields = ("session", "seq", "event_type", "data", "author", "client_msg_id", "created_at")
    ordering = ("-created_at",)
    show_full_result_count = False  # COUNT(*) over the event table is slow once it is large

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UserPreference)
class UserPreferenceAdmin(admin.ModelAdmin):
    list_display = ("user", "ai_enabled", "updated_at")
    list_filter = ("ai_enabled",)
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(admin.ModelAdmin):
    list_display = ("key", "user", "scope", "status", "response_status", "created_at")
    list_filter = ("status", "created_at")
    search_fields = ("key", "user__username", "scope")
    readonly_fields = (
        "key",
        "user",
        "scope",
        "request_hash",
        "status",
        "response_status",
        "response_body",
        "created_at",
        "updated_at",
    )
    list_select_related = ("user",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
