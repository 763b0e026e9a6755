"""Probe endpoints served at the root: /healthz, /readyz, /metrics.

They bypass DRF (no authentication, no throttling, no session): probes come
from load balancers, orchestrators and Prometheus many times a minute.
/readyz serves a cached result over the probe's own long-lived connections
(apps/ops/health.py), so a burst of probes costs one check.

``METRICS_TOKEN`` makes /metrics require ``Authorization: Bearer <token>``.
docker-compose.yml and docker/k8s/config.yaml set one (Prometheus sends it as
its scrape bearer token); ``manage.py check --deploy`` fails when it is empty
(ops.E001), and a production process serving /metrics without one logs a
warning at its first scrape.
"""

from __future__ import annotations

import logging
import os
import socket

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from apps.ops import health, metrics

logger = logging.getLogger(__name__)

# Which instance answered (load-balancer debugging, the LB tests and bench/lb.py).
INSTANCE_NAME = settings.INSTANCE_NAME or f"{socket.gethostname()}:{os.getpid()}"


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "instance": INSTANCE_NAME})


@never_cache
@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    include_workers = request.GET.get("workers", "").lower() in {"1", "true", "yes"}
    readiness = await health.readiness_run(include_workers=include_workers)
    status, body = health.readiness_payload(readiness)
    return JsonResponse(body, status=status)


@never_cache
@require_GET
async def metrics_view(request: HttpRequest) -> HttpResponse:
    if not settings.METRICS_TOKEN and not settings.DEBUG:
        _warn_public_metrics()
    if not metrics.metrics_bearer_ok(request.headers.get("Authorization", "")):
        return JsonResponse(
            {"code": "not_authenticated", "message": "A valid metrics bearer token is required.", "details": {}},
            status=401,
        )
    # The scrape-time collectors block on RabbitMQ/PostgreSQL/Redis: off the event loop.
    body = await sync_to_async(metrics.metrics_render)()
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


_warned: list[bool] = []


def _warn_public_metrics() -> None:
    if not _warned:
        _warned.append(True)
        logger.warning("METRICS_TOKEN is empty: /metrics is served to anyone (set it; see manage.py check --deploy)")


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
]
