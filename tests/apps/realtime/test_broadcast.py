"""The broadcast helper's readiness round trip on the real Redis channel layer."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.realtime.broadcast import channel_layer_check


def test_channel_layer_check_round_trips_and_leaves_no_subscription_behind():
    async def scenario():
        layer = get_channel_layer()
        for _ in range(3):
            await channel_layer_check(timeout=5)
        loop_layer = layer._get_layer() if hasattr(layer, "_get_layer") else None
        if loop_layer is not None and hasattr(loop_layer, "channels"):
            # The pub/sub layer: no readyz channel still subscribed.
            assert not [c for c in loop_layer.channels if "readyz." in c]
            assert not [c for s in loop_layer._shards for c in s._subscribed_to if "readyz." in str(c)]

    async_to_sync(scenario)()


def test_sync_broadcasts_share_one_redis_connection_per_process(settings):
    """Sync callers (gunicorn threads, Celery tasks) have no event loop: each send used to start one,
    and the channel layer opened (and closed) a Redis connection per loop, one per broadcast."""
    import copy
    import threading
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    from apps.realtime.broadcast import access_revoke, session_broadcast
    from tests.support.blackhole import BlackholeProxy

    redis_url = urlsplit(settings.REDIS_URL)
    proxy = BlackholeProxy(upstream_port=redis_url.port or 6379)
    proxy.start()
    try:
        layers = copy.deepcopy(settings.CHANNEL_LAYERS)
        for host in layers["default"]["CONFIG"]["hosts"]:
            host["address"] = urlunsplit(redis_url._replace(netloc=f"127.0.0.1:{proxy.port}"))
        settings.CHANNEL_LAYERS = layers

        def many() -> None:
            for _ in range(10):
                session_broadcast(session_id=uuid.uuid4(), message={"type": "presence", "event": "ping"})
            access_revoke(user_id=0, reason="test")

        callers = [threading.Thread(target=many) for _ in range(3)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=30)
        assert len(proxy._live) == 1, f"{len(proxy._live)} Redis connections for 33 sends"
    finally:
        proxy.stop()
