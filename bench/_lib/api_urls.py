"""The production URLs plus the bench baseline: a bare Django view, same server,
same middleware stack, no DRF, no auth, no database."""

from django.http import HttpRequest, JsonResponse
from django.urls import path

from project.urls import handler400, handler404, handler500  # noqa: F401
from project.urls import urlpatterns as project_urlpatterns


def bare(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True, "service": "context-engine", "items": [1, 2, 3]})


urlpatterns = [path("bench/bare/", bare), *project_urlpatterns]
