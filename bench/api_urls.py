"""The production URLs plus the bench baseline: a bare Django view, same server,
same middleware stack, no DRF, no auth, no database."""

from django.http import HttpRequest, JsonResponse
from django.urls import path

from project.urls import handler400, handler404, handler500, urlpatterns as project_urlpatterns  # noqa: F401


def bare(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True, "service": "context-engine", "items": [1, 2, 3]})


urlpatterns = [path("bench/bare/", bare), *project_urlpatterns]
