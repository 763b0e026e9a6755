"""An admin page, "Fleet", showing the same figures as /api/v1/ops/queues/ and /report/.

Registered by adding one URL to the default admin site (no model behind it);
imported from ``OpsConfig.ready()``. The admin lets in staff; the page itself
needs ``ops.view_fleet`` (403 otherwise), as the REST endpoints do.
"""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from apps.ops.fleet import figures as fleet
from apps.ops.permissions import VIEW_FLEET, operator_has


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


_original_get_urls = admin.site.get_urls


def _get_urls() -> list[URLPattern]:
    return [path("ops/fleet/", admin.site.admin_view(fleet_view), name="ops_fleet"), *_original_get_urls()]


if not getattr(admin.site, "_ops_fleet_registered", False):
    admin.site.get_urls = _get_urls  # type: ignore[method-assign]
    admin.site._ops_fleet_registered = True  # type: ignore[attr-defined]
