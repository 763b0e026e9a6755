"""The channel layer's Redis connections, probed: a black-holed one is dropped so redis-py reconnects.

The pub/sub layer (channels-redis 4.3, ``RedisPubSubChannelLayer``) keeps one
subscribed connection and a pool per event loop, with no socket timeout
(``project/settings/base.py`` says why). Where the network path to Redis goes
dead without a reset (a partition, a crashed host; the chaos suite's
``partition-web-redis``), nothing ever fails: the subscribed connection waits
for messages that never come, so every socket of the process stops getting
live events, and a publish waits for its reply for ever while holding the
shard's lock, so every later subscribe (a new socket's ``group_add``) waits
behind it. The process looks healthy and delivers nothing, for good.

``layer_probe_ensure`` starts one probe per event loop: every
``CHANNEL_LAYER_PROBE_S`` it sends a message to a channel of its own and waits
as long again to receive it. When it does not come back (or the send itself
hangs), every connection of that loop's layer is disconnected: the pending
reads fail, redis-py reconnects the subscribed connection and subscribes it
again to every channel and group it had, and the next publish takes a fresh
connection. Live delivery resumes; clients fill any gap by seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

logger = logging.getLogger("apps.realtime.layer_health")

_probes: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}
resets = 0  # this process's layer resets (read by tests and logs)


def layer_probe_ensure() -> None:
    """Start this event loop's probe unless it runs (call from inside the loop)."""
    if not settings.CHANNEL_LAYER_PROBE_S:
        return
    loop = asyncio.get_running_loop()
    task = _probes.get(loop)
    if task is None or task.done():
        _probes[loop] = loop.create_task(_probe_loop(settings.CHANNEL_LAYER_PROBE_S))


async def _probe_loop(every: float, layer: Any = None) -> None:
    layer = layer or get_channel_layer()
    if layer is None:
        return
    channel: str | None = None
    while True:
        await asyncio.sleep(every)
        started = time.monotonic()
        try:
            if channel is None:
                channel = await asyncio.wait_for(layer.new_channel("probe."), timeout=every)
            # The channel's own queue, not layer.receive(): a receive cut short by a
            # timeout unsubscribes, and that waits on the very lock a hung publish holds.
            inbox: asyncio.Queue = layer._get_layer().channels[channel]
            await asyncio.wait_for(layer.send(channel, {"type": "layer.probe", "t": started}), timeout=every)
            while True:  # a late answer to an earlier probe may come first
                message = layer.deserialize(await asyncio.wait_for(inbox.get(), timeout=every))
                if message.get("t") == started:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a timeout or a Redis error: the same answer
            channel = None  # subscribe a fresh one next time
            await layer_reset(layer, reason=f"{type(exc).__name__}: {exc}"[:200], waited=time.monotonic() - started)


async def layer_reset(layer: Any, *, reason: str, waited: float) -> None:
    """Disconnect every Redis connection of this loop's layer, in use or idle (channels-redis internals)."""
    global resets
    resets += 1
    logger.warning(
        "channel layer probe failed: reconnecting its Redis connections",
        extra={"reason": reason, "waited_s": round(waited, 2)},
    )
    loop_layer = layer._get_layer() if hasattr(layer, "_get_layer") else layer
    for shard in getattr(loop_layer, "_shards", ()):
        redis = getattr(shard, "_redis", None)
        if redis is not None:
            with contextlib.suppress(Exception):  # already broken: that is the point
                await redis.connection_pool.disconnect(inuse_connections=True)
