"""Wires the console into Django admin (``/admin/ops/console/``) and links it from the admin index."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.urls import URLPattern, path

from apps.ops.console import views

_previous_get_urls = admin.site.get_urls


def _get_urls() -> list[URLPattern]:
    return [
        path("ops/console/", admin.site.admin_view(views.console_view), name="ops_console"),
        path("ops/console/replay/", admin.site.admin_view(views.replay_fingerprint), name="ops_console_replay"),
        path("ops/console/models/", admin.site.admin_view(views.model_version_action), name="ops_console_models"),
        *_previous_get_urls(),
    ]


site: Any = admin.site  # the default AdminSite, extended in place (as the fleet page is)
if not getattr(site, "_ops_console_registered", False):
    site.get_urls = _get_urls
    site._ops_console_registered = True
    # The admin index carries an "Operations" box linking the console and the fleet page.
    site.index_template = "admin/ops/index.html"
