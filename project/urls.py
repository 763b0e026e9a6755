from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.common.views import api_not_found

api_v1 = [
    path("", include("apps.context.urls")),
    path("", include("apps.ai.urls")),
    path("", include("apps.ops.deadletters.urls")),
    path("", include("apps.ops.fleet.urls")),
    path("", include("apps.batch.urls")),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("playground/", include("apps.playground.urls")),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("", include("apps.ops.probe_urls")),
    # Last: any other /api/ path answers a JSON 404, not an HTML page.
    re_path(r"^api/", api_not_found),
]

handler400 = "apps.common.views.bad_request"
handler404 = "apps.common.views.page_not_found"
handler500 = "apps.common.views.server_error"

if settings.DEBUG:
    # Admin and docs assets under `make up` (uvicorn serves no static files);
    # production serves them from the image (collectstatic) behind HAProxy.
    urlpatterns += staticfiles_urlpatterns()
