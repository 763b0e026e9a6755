"""Admin pages: "Fleet" (the figures of /api/v1/ops/queues/ and /report/) and "Fleet tasks and control".

Registered by adding URLs to the default admin site (no model behind them);
imported from ``OpsConfig.ready()``. The admin lets in staff; the pages need
``ops.view_fleet`` and their actions (revoke, pause, resume, purge: the same
services as the REST API, so audited alike) ``ops.change_fleet``; 403 otherwise.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse
from django.views.decorators.http import require_POST

from apps.common.exceptions import ApplicationError
from apps.eventbus.queues import Queue
from apps.ops.fleet import figures as fleet
from apps.ops.fleet import selectors, services
from apps.ops.models import FleetAction
from apps.ops.permissions import CHANGE_FLEET, VIEW_FLEET, operator_has


def fleet_view(request: HttpRequest) -> HttpResponse:
    if not operator_has(request.user, VIEW_FLEET):
        raise PermissionDenied
    try:
        window = min(3600.0, max(1.0, float(request.GET.get("window", fleet.DEFAULT_WINDOW))))
    except ValueError:
        window = fleet.DEFAULT_WINDOW
    context = {
        **admin.site.each_context(request),
        "title": "Fleet: queues, workers and scaling advice",
        "window": int(window),
    }
    try:
        context["snapshot"] = fleet.fleet_snapshot(window=window)
    except fleet.FleetUnavailable as exc:
        context["error"] = str(exc)
    return TemplateResponse(request, "admin/ops/fleet.html", context)


def fleet_tasks_view(request: HttpRequest) -> HttpResponse:
    if not operator_has(request.user, VIEW_FLEET):
        raise PermissionDenied
    paused = {p.queue: p for p in selectors.paused_queue_list()}
    context = {
        **admin.site.each_context(request),
        "title": "Fleet: tasks, queues and control",
        "can_change": operator_has(request.user, CHANGE_FLEET),
        "queues": [{"name": q.value, "paused": paused.get(q.value)} for q in Queue],
        "actions": selectors.fleet_action_list(limit=30),
    }
    try:
        context["tasks"] = selectors.fleet_tasks()
    except selectors.InspectUnavailable as exc:
        context["error"] = str(exc)
    return TemplateResponse(request, "admin/ops/fleet_tasks.html", context)


@require_POST
def fleet_action_view(request: HttpRequest) -> HttpResponse:
    if not operator_has(request.user, CHANGE_FLEET):
        raise PermissionDenied
    action, user = request.POST.get("action"), request.user
    queue, task_id = request.POST.get("queue", ""), request.POST.get("task_id", "")
    try:
        if action == "revoke":
            row = services.task_revoke(task_id=task_id, user=user, terminate=request.POST.get("terminate") == "on")
            messages.info(request, f"Revoked {row.target}.")
        elif action == "pause":
            services.queue_pause(queue=queue, user=user, reason=request.POST.get("reason", "")[:500])
            messages.info(request, f"Paused {queue}: no worker consumes it until it is resumed.")
        elif action == "resume":
            services.queue_resume(queue=queue, user=user)
            messages.info(request, f"Resumed {queue}.")
        elif action == "purge":
            row = services.queue_purge(queue=queue, confirm=request.POST.get("confirm", ""), user=user)
            messages.info(request, f"Purged {row.result.get('purged', 0)} message(s) from {queue}.")
        else:
            messages.error(request, "Unknown action.")
    except ApplicationError as exc:
        messages.error(request, f"Not done: {exc}")
    return HttpResponseRedirect(reverse("admin:ops_fleet_tasks"))


@admin.register(FleetAction)
class FleetActionAdmin(admin.ModelAdmin):
    """The audit, read only: rows are written by the fleet services, never by hand."""

    list_display = ("created_at", "action", "target", "requested_by", "result")
    list_filter = ("action",)
    search_fields = ("target",)
    readonly_fields = ("action", "target", "requested_by", "params", "result", "created_at")

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return operator_has(request.user, VIEW_FLEET)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


_original_get_urls = admin.site.get_urls


def _get_urls() -> list[URLResolver | URLPattern]:
    return [
        path("ops/fleet/", admin.site.admin_view(fleet_view), name="ops_fleet"),
        path("ops/fleet/tasks/", admin.site.admin_view(fleet_tasks_view), name="ops_fleet_tasks"),
        path("ops/fleet/action/", admin.site.admin_view(fleet_action_view), name="ops_fleet_action"),
        *_original_get_urls(),
    ]


if not getattr(admin.site, "_ops_fleet_registered", False):
    admin.site.get_urls = _get_urls  # type: ignore[method-assign]
    admin.site._ops_fleet_registered = True  # type: ignore[attr-defined]
