"""ASGI entry point: Django for HTTP, Channels for WebSockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.dev")

# Django must be set up before anything imports models (the WebSocket routing does).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from apps.common.asgi import BodySizeLimitMiddleware  # noqa: E402
from apps.realtime.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter(
    {
        # 413 before Django buffers an oversized body (it reads bodies uncapped).
        "http": BodySizeLimitMiddleware(django_asgi_app),
        "websocket": websocket_application,
    }
)
