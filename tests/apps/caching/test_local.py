"""L1 alone: LRU bound, TTL, tag/pattern invalidation, generation fencing."""

from __future__ import annotations

import threading
import time

from apps.caching.local import LocalCache


def _put(cache: LocalCache, key: str, value: object, *, ttl: float = 10.0, tags: tuple[str, ...] = ()) -> bool:
    return cache.set(key, value, ttl=ttl, tags=tags, token=cache.token(key, tags), encoded=False)


def test_lru_evicts_the_least_recently_used_entry():
    cache = LocalCache(max_entries=3)
    for key in ("a", "b", "c"):
        _put(cache, key, key)
    assert cache.get("a") is not None  # "a" is now the most recent
    _put(cache, "d", "d")
    assert cache.get("b") is None
    assert {k for k in ("a", "c", "d") if cache.get(k) is not None} == {"a", "c", "d"}
    assert len(cache) == 3
    assert cache.evictions == 1


def test_entries_expire_after_their_ttl():
    cache = LocalCache(max_entries=10)
    _put(cache, "k", 1, ttl=0.05)
    assert cache.get("k").value == 1
    time.sleep(0.08)
    assert cache.get("k") is None
    assert cache.expirations == 1


def test_tag_invalidation_drops_every_entry_with_the_tag_and_only_those():
    cache = LocalCache(max_entries=10)
    _put(cache, "s1", 1, tags=("session:1",))
    _put(cache, "p1", 2, tags=("session:1", "participants:1"))
    _put(cache, "s2", 3, tags=("session:2",))
    assert cache.invalidate_tags(["session:1"]) == 2
    assert cache.get("s1") is None and cache.get("p1") is None
    assert cache.get("s2").value == 3


def test_pattern_invalidation_matches_globs():
    cache = LocalCache(max_entries=10)
    for key in ("ctx.snapshot:v1:a", "ctx.snapshot:v1:b", "ctx.session:v1:a"):
        _put(cache, key, key)
    assert cache.invalidate_pattern("ctx.snapshot:*") == 2
    assert cache.get("ctx.session:v1:a") is not None


def test_a_fill_that_started_before_an_invalidation_is_refused():
    cache = LocalCache(max_entries=10)
    for invalidate in (
        lambda: cache.invalidate_keys(["k"]),
        lambda: cache.invalidate_tags(["t"]),
        lambda: cache.invalidate_pattern("zzz*"),
        cache.clear,
    ):
        token = cache.token("k", ("t",))
        invalidate()  # lands while the "loader" runs
        assert cache.set("k", "old", ttl=10, tags=("t",), token=token, encoded=False) is False
        assert cache.get("k") is None
    token = cache.token("k", ("t",))
    assert cache.set("k", "new", ttl=10, tags=("t",), token=token, encoded=False) is True


def test_concurrent_use_from_many_threads_keeps_the_bound_and_the_index_consistent():
    cache = LocalCache(max_entries=50)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(2000):
                key = f"k{(n * 7 + i) % 120}"
                _put(cache, key, i, tags=(f"t{i % 5}",))
                cache.get(key)
                if i % 97 == 0:
                    cache.invalidate_tags([f"t{i % 5}"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) <= 50
    indexed = set().union(*cache._by_tag.values()) if cache._by_tag else set()
    assert indexed == set(cache._entries)


def test_l1_bounded_in_bytes_evicts_and_keeps_its_tag_index_in_step():
    def put_blob(cache: LocalCache, key: str, size: int, tags: tuple[str, ...] = ()) -> bool:
        return cache.set(key, b"x" * size, ttl=10.0, tags=tags, token=cache.token(key, tags), encoded=True)

    cache = LocalCache(max_entries=1000, max_bytes=10_000)
    for i in range(10):
        assert put_blob(cache, f"k{i}", 2_000, tags=(f"t{i}",))
    # about four 2 KB entries fit in 10 KB (each also counts its key and overhead)
    live = [f"k{i}" for i in range(10) if cache.get(f"k{i}") is not None]
    assert live == ["k6", "k7", "k8", "k9"] and cache.bytes <= 10_000
    assert cache.invalidate_tags(["t0", "t5"]) == 0  # evicted entries left the tag index
    # one value over the whole budget is refused and nothing else is disturbed
    assert not put_blob(cache, "huge", 20_000, tags=("t9",))
    assert cache.get("huge") is None and cache.oversized == 1
    assert cache.invalidate_tags(["t9"]) == 1 and cache.get("k9") is None
