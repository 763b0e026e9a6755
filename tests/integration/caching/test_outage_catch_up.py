"""Invalidations made while Redis was unreachable reach the other process's L1 soon after it is back.

A private Redis (never the shared one) and two cache instances on it, each with
its own L1 and its own bus subscription, as two processes have. The writer
invalidates keys while Redis cannot answer: stalled (SIGSTOP: connections hang,
nobody's subscription notices) or stopped and started again. The reader's L1
holds every key's old value before; the test reads through the reader until
it serves the new one for every key, timing each from the moment Redis is
back. With ``bus="dropped"`` the reader gets no pub/sub message at all, so only
the invalidation log (the catch-up) can bring the invalidations.

The goal (issue 14): p99 within 2 s of Redis coming back. Measured on this
machine (2 shared cores): see the ``catch_up_p99_s`` property, about 0.5 s
with the bus, about 0.8 s with every bus message dropped.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from apps.caching.cache import MultiLevelCache
from tests.support.services import PrivateRedis

pytestmark = [pytest.mark.integration]

GOAL_P99_S = 2.0
KEYS = 100
ROUNDS = 3


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    instance = PrivateRedis()
    instance.start()
    yield instance
    if instance.process is not None and instance.process.poll() is None:
        os.kill(instance.process.pid, signal.SIGCONT)  # never leave it stopped
    instance.cleanup()


@pytest.fixture
def caches(private_redis) -> Iterator[tuple[MultiLevelCache, MultiLevelCache]]:
    writer = MultiLevelCache(redis_url=private_redis.url, prefix="ce-test-outage")
    reader = MultiLevelCache(redis_url=private_redis.url, prefix="ce-test-outage")
    yield writer, reader
    writer.close()
    reader.close()


def _wait(predicate, *, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.01)


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _round(writer: MultiLevelCache, reader: MultiLevelCache, redis: PrivateRedis, fault: str, n: int) -> list[float]:
    keys = [f"r{n}:k{i}" for i in range(KEYS)]
    data = dict.fromkeys(keys, "old")
    for cache in (writer, reader):
        assert cache.wait_ready(10), "the bus did not connect"
    for key in keys:
        assert writer.get_or_load(key, lambda key=key: data[key], ttl=300) == "old"
        assert reader.get_or_load(key, lambda key=key: data[key], ttl=300) == "old"
    assert all(reader.local.get(key) is not None for key in keys), "the reader's L1 does not hold the old values"

    # Redis becomes unreachable; the writer changes every value and invalidates each key.
    assert redis.process is not None
    if fault == "stalled":
        os.kill(redis.process.pid, signal.SIGSTOP)
    else:
        redis.stop()
    for key in keys:
        data[key] = "new"
        writer.invalidate(keys=[key])
    assert writer.stats()["invalidations"]["queued"] >= 1, "Redis was never found unreachable"

    # Redis is back: from now on, time each key until the reader serves the new value.
    if fault == "stalled":
        os.kill(redis.process.pid, signal.SIGCONT)
    else:
        redis.start()
    back = time.monotonic()
    stale = set(keys)
    times: list[float] = []
    deadline = back + 3 * GOAL_P99_S
    while stale and time.monotonic() < deadline:
        for key in list(stale):
            if reader.get_or_load(key, lambda key=key: data[key], ttl=300) == "new":
                stale.discard(key)
                times.append(time.monotonic() - back)
        time.sleep(0.005)
    assert not stale, (
        f"{len(stale)} of {KEYS} keys still stale in the reader's L1 {3 * GOAL_P99_S}s after Redis came back"
    )
    return times


@pytest.mark.parametrize("bus", ["delivered", "dropped"])
@pytest.mark.parametrize("fault", ["stalled", "restarted"])
def test_invalidations_made_while_redis_was_unreachable_reach_the_other_l1_soon_after_it_is_back(
    caches, private_redis, fault, bus, record_property
):
    writer, reader = caches
    if bus == "dropped":
        reader._on_message = lambda data: None  # type: ignore[method-assign] - no pub/sub message reaches it
    times: list[float] = []
    for n in range(ROUNDS):
        times += _round(writer, reader, private_redis, fault, n)

    p99, worst = _p99(times), max(times)
    record_property("catch_up_p99_s", round(p99, 3))
    record_property("catch_up_max_s", round(worst, 3))
    print(f"\ncatch-up after Redis {fault}, bus {bus}: p99 {p99:.3f}s, max {worst:.3f}s over {len(times)} keys")
    assert p99 <= GOAL_P99_S, f"p99 {p99:.3f}s over the {GOAL_P99_S}s goal (max {worst:.3f}s)"
