"""Invalidations survive an open circuit and a lost bus message: the in-process queue and the log.

Two cache instances on one Redis namespace behave like two processes (own L1,
own subscription); tests/integration/caching/test_outage_catch_up.py does the
same against a private Redis that really stalls and restarts.
"""

from __future__ import annotations

import time

from apps.caching.cache import MultiLevelCache
from tests.apps.caching.test_cache import _redis, _wait


def _fill(cache: MultiLevelCache, key: str, value: str = "old", tags: tuple[str, ...] = ()) -> None:
    assert cache.get_or_load(key, lambda: value, ttl=60, tags=tags) == value
    assert cache.local.get(key) is not None


def _open_circuit(cache: MultiLevelCache, *, for_s: float = 60.0) -> None:
    """What a failing Redis call does: the breaker skips Redis for a while."""
    cache._down_until = time.monotonic() + for_s
    cache._circuit_open = True


def _deaf(cache: MultiLevelCache) -> None:
    """The bus stops bringing messages to this instance (its subscription stays up)."""
    cache._on_message = lambda data: None  # type: ignore[method-assign]


def test_invalidations_queued_while_the_circuit_is_open_are_deduplicated_and_go_out_when_it_closes(make_cache):
    writer, other = make_cache(), make_cache()
    for key in ("k1", "k2"):
        _fill(other, key)
    _fill(other, "tagged", tags=("t",))
    _open_circuit(writer)

    for _ in range(3):
        writer.invalidate(keys=["k1"])
    writer.invalidate(keys=["k1", "k2"])
    writer.invalidate(tags=["t"])
    writer.invalidate(tags=["t"])

    assert writer.pending == 3  # k1, k2 and t, once each
    assert other.local.get("k1") is not None  # nothing went out yet
    writer._down_until = 0.0  # the cooldown is over: the listener's next probe gets through
    assert _wait(lambda: writer.pending == 0), "the queue was not delivered when the circuit closed"
    assert _wait(lambda: all(other.local.get(k) is None for k in ("k1", "k2", "tagged")))
    assert _wait(lambda: writer.stats()["invalidations"]["delivered_late"] >= 1)


def test_past_its_bound_the_queue_collapses_into_clearing_every_l1(make_cache):
    writer, other = make_cache(pending_max=3), make_cache()
    for key in ("a", "b", "c", "d", "untouched"):
        _fill(other, key)
    _open_circuit(writer)

    for key in ("a", "b", "c", "d"):
        writer.invalidate(keys=[key])

    assert writer.pending_overflowed
    writer._down_until = 0.0
    # "untouched" was never invalidated: the whole L1 goes, since the queue no longer knows what changed.
    assert _wait(lambda: len(other.local) == 0), f"{len(other.local)} entries left in the other L1"
    assert not writer.pending_overflowed
    assert _wait(lambda: writer.stats()["invalidations"]["pending_overflows"] == 1)


def test_a_listener_that_missed_a_bus_message_catches_up_from_the_log(make_cache):
    writer, other = make_cache(), make_cache(catchup_interval=0.2)
    _fill(other, "k")
    _fill(other, "kept")
    _deaf(other)

    writer.invalidate(keys=["k"])

    assert _wait(lambda: other.local.get("k") is None), "the missed invalidation never reached the other L1"
    assert other.local.get("kept") is not None  # caught up precisely, not by clearing everything
    assert other.stats()["invalidations"]["caught_up"] == 1


def test_invalidations_trimmed_from_the_log_unread_clear_the_l1(make_cache, cache_prefix):
    writer, other = make_cache(), make_cache(catchup_interval=3600)
    _fill(other, "k")
    _fill(other, "z")
    _deaf(other)
    _open_circuit(other)  # it reads nothing while the entry is there

    writer.invalidate(keys=["k"])
    _redis().xtrim(f"{cache_prefix}:cache:s1:log", maxlen=0, approximate=False)  # gone before the other read it
    other._down_until = 0.0  # its circuit closes: the listener reads the log at once

    assert _wait(lambda: len(other.local) == 0), "a gap in the log did not clear the L1"
    assert other.stats()["invalidations"]["catchup_clears"] == 1


def test_what_the_bus_brought_is_not_applied_again_from_the_log(make_cache):
    writer, other = make_cache(), make_cache(catchup_interval=0.05)
    for i in range(5):
        writer.invalidate(keys=[f"k{i}"])
    assert _wait(lambda: other.stats()["invalidations"]["received"] == 5)
    assert _wait(lambda: other._cursor_seq == 5), "the log read fell behind"
    assert other.stats()["invalidations"]["caught_up"] == 0
    assert other.stats()["invalidations"]["catchup_clears"] == 0


def test_a_black_holed_subscription_is_not_trusted_for_long(cache_prefix):
    from tests.support.blackhole import BlackholeProxy
    from tests.support.services import PrivateRedis

    private = PrivateRedis()
    private.start()
    proxy = BlackholeProxy(upstream_port=private.port)
    proxy.start()
    writer = MultiLevelCache(redis_url=private.url, prefix=cache_prefix)
    reader = MultiLevelCache(redis_url=f"redis://127.0.0.1:{proxy.port}/0", prefix=cache_prefix)
    try:
        assert writer.wait_ready(5) and reader.wait_ready(5)
        _fill(reader, "k")
        proxy.blackhole()  # the reader's connections stay open and silent: no error, no message

        writer.invalidate(keys=["k"])

        # Within bus_silence (2 s) the reader takes its subscription for dead and reconnects.
        assert _wait(lambda: reader.local.get("k") is None, timeout=5), "the reader still trusts a dead subscription"
        assert reader.wait_ready(5)
        assert reader.get_or_load("k", lambda: "new", ttl=60) == "new"
    finally:
        writer.close()
        reader.close()
        proxy.stop()
        private.cleanup()
