from channels.routing import URLRouter
from django.urls import path, re_path

from apps.realtime.auth import TokenAuthMiddleware
from apps.realtime.consumers import NotFoundConsumer, SessionConsumer

websocket_urlpatterns = [
    # str, not uuid: a malformed id must get the same 4404 as an unknown one.
    path("ws/sessions/<str:session_id>/", SessionConsumer.as_asgi()),
    re_path(r"", NotFoundConsumer.as_asgi()),
]

# Origin is checked by the consumer (not channels' OriginValidator), so a
# refusal carries its own close code instead of a bare HTTP 403.
websocket_application = TokenAuthMiddleware(URLRouter(websocket_urlpatterns))
