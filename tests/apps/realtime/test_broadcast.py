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
