"""The console page and its two actions; every read needs a view permission, every action a change one."""

from __future__ import annotations

import time
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, Min, Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from apps.ai import selectors as ai_selectors
from apps.ai import services as ai_services
from apps.batch import selectors as batch_selectors
from apps.common.exceptions import ApplicationError
from apps.ops.console.charts import HEIGHT, WIDTH, polyline, queue_series
from apps.ops.deadletters import selectors as dead_letter_selectors
from apps.ops.deadletters import services as dead_letter_services
from apps.ops.fleet import figures as fleet
from apps.ops.models import DeadLetter, DeadLetterStatus
from apps.ops.permissions import CHANGE_DEAD_LETTERS, VIEW_DEAD_LETTERS, VIEW_FLEET, operator_has

VIEW_MODELS = "ai.view_modelversion"
CHANGE_MODELS = "ai.change_modelversion"
VIEW_JOBS = "batch.view_jobrun"
BULK_REPLAY_LIMIT = 100


def _require(request: HttpRequest, permission: str) -> None:
    if not operator_has(request.user, permission):
        raise PermissionDenied


def _charts() -> list[dict[str, Any]]:
    names = [name for name, kind in fleet.monitored_queues() if kind == "work"]
    samples = fleet.queue_samples(names)
    now, span = time.time(), 0.0
    for history in samples.values():
        if history:
            span = max(span, now - min(s.t for s in history))
    charts = []
    for name in names:
        series = queue_series(samples.get(name) or [], now=now)
        charts.append(
            {
                "queue": name,
                "series": [
                    {"label": s.label, "latest": s.latest, "peak": s.peak, "points": polyline(s, span=span or 1.0)}
                    for s in series
                ],
            }
        )
    return charts


def _dead_letter_groups() -> list[dict[str, Any]]:
    return list(
        DeadLetter.objects.values("fingerprint", "queue", "task_name", "reason", "exception_class")
        .annotate(
            count=Count("id"),
            new=Count("id", filter=Q(status=DeadLetterStatus.NEW)),
            first_seen=Min("created_at"),
            last_seen=Max("created_at"),
        )
        .order_by("-last_seen")[:50]
    )


def _model_versions() -> tuple[list[Any], list[str]]:
    versions = list(ai_selectors.model_version_list()[:12])
    keys = sorted({k for v in versions for k, value in (v.metrics or {}).items() if isinstance(value, int | float)})
    return versions, keys


@require_GET
def console_view(request: HttpRequest) -> HttpResponse:
    _require(request, VIEW_FLEET)
    user = request.user
    context: dict[str, Any] = {
        **admin.site.each_context(request),
        "title": "Operator console",
        "chart_width": WIDTH,
        "chart_height": HEIGHT,
        "can_replay": operator_has(user, CHANGE_DEAD_LETTERS),
        "can_promote": operator_has(user, CHANGE_MODELS),
        "bulk_replay_limit": BULK_REPLAY_LIMIT,
    }
    try:
        context["charts"] = _charts()
        context["snapshot"] = fleet.fleet_snapshot(window=fleet.DEFAULT_WINDOW)
    except fleet.FleetUnavailable as exc:
        context["fleet_error"] = str(exc)
    if operator_has(user, VIEW_DEAD_LETTERS):
        context["dead_letter_groups"] = _dead_letter_groups()
    if operator_has(user, VIEW_MODELS):
        context["model_versions"], context["metric_keys"] = _model_versions()
    if operator_has(user, VIEW_JOBS):
        context["job_runs"] = list(batch_selectors.job_run_list()[:20])
    return TemplateResponse(request, "admin/ops/console.html", context)


def _back(request: HttpRequest) -> HttpResponseRedirect:
    return HttpResponseRedirect(reverse("admin:ops_console"))


@require_POST
def replay_fingerprint(request: HttpRequest) -> HttpResponse:
    _require(request, CHANGE_DEAD_LETTERS)
    fingerprint = request.POST.get("fingerprint", "")
    queryset = dead_letter_selectors.dead_letter_list(filters={"fingerprint": fingerprint})
    if not fingerprint or not queryset.exists():
        messages.error(request, "No dead letters with that fingerprint.")
        return _back(request)
    result = dead_letter_services.dead_letter_replay_bulk(
        queryset=queryset, user=request.user, force=False, limit=BULK_REPLAY_LIMIT
    )
    messages.info(
        request,
        f"Replayed {len(result['replayed'])}, skipped {len(result['skipped'])} (replayed or discarded before), "
        f"failed {len(result['failed'])}{'; more match, replay again' if result['truncated'] else ''}.",
    )
    return _back(request)


@require_POST
def model_version_action(request: HttpRequest) -> HttpResponse:
    _require(request, CHANGE_MODELS)
    action = request.POST.get("action")
    try:
        if action == "promote":
            version = ai_services.model_version_promote(model_version_id=request.POST.get("model_version_id"))
            messages.info(request, f"Promoted {version.name} v{version.version}.")
        elif action == "rollback":
            previous = ai_services.model_version_rollback(name=request.POST.get("name") or "next_action")
            messages.info(request, f"Rolled back; now promoted: {previous.version if previous else 'none'}.")
        else:
            messages.error(request, "Unknown action.")
    except (ApplicationError, ValueError) as exc:
        messages.error(request, f"Not done: {exc}")
    return _back(request)
