from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

api_v1 = [
    path("", include("apps.context.urls")),
    path("", include("apps.ai.urls")),
    path("", include("apps.ops.urls")),
    path("", include("apps.ops.fleet_urls")),
    path("", include("apps.batch.urls")),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("", include("apps.ops.probe_urls")),
]

if settings.DEBUG:
    # Admin and docs assets under `make up` (uvicorn serves no static files);
    # production serves them from the image (collectstatic) behind HAProxy.
    urlpatterns += staticfiles_urlpatterns()
