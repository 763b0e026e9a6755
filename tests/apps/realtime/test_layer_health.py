"""A black-holed path to Redis: the layer probe drops the dead connections and live delivery resumes.

A real channels-redis pub/sub layer and a real Redis, reached through a
``BlackholeProxy`` whose open connections stop forwarding (new ones pass).
Without the probe the subscribed connection waits for ever and nothing arrives.
"""

from __future__ import annotations

import asyncio

from asgiref.sync import async_to_sync
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from redis.exceptions import RedisError

from apps.realtime import layer_health
from tests.support.blackhole import BlackholeProxy


def _redis_port() -> int:
    return int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])


def test_after_a_black_hole_the_probe_reconnects_and_group_messages_arrive_again():
    proxy = BlackholeProxy(upstream_port=_redis_port())
    proxy.start()
    layer = RedisPubSubChannelLayer(
        hosts=[{"address": f"redis://127.0.0.1:{proxy.port}/0", "socket_timeout": None}], prefix="probe-test"
    )

    async def scenario() -> None:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "m", "n": 1})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["n"] == 1
        proxy.blackhole()
        before = layer_health.resets
        probe = asyncio.ensure_future(layer_health._probe_loop(0.5, layer))
        try:
            deadline = asyncio.get_running_loop().time() + 20
            got = None
            while got is None and asyncio.get_running_loop().time() < deadline:
                try:
                    await asyncio.wait_for(layer.group_send("room", {"type": "m", "n": 2}), 2)
                    got = await asyncio.wait_for(layer.receive(channel), 1)
                except (TimeoutError, OSError, RedisError):  # the publish caught in the reset fails; the next goes on
                    got = None
                    if channel not in layer._get_layer().channels:  # a cut-short receive unsubscribed it
                        channel = await layer.new_channel()
                        await layer.group_add("room", channel)
            assert got is not None and got["n"] == 2, "no group message arrived after the black hole"
            assert layer_health.resets > before
        finally:
            probe.cancel()
            await layer.flush()

    try:
        async_to_sync(scenario)()
    finally:
        proxy.stop()
