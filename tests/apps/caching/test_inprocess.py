"""The process-wide LRU and single-flight that the L1 and the embedding cache share."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from apps.caching.inprocess import BoundedLRU, SingleFlight


def test_lru_evicts_the_least_recently_used_and_counts():
    removed: list[tuple[str, int]] = []
    lru: BoundedLRU[str, int] = BoundedLRU(2, on_remove=lambda k, v: removed.append((k, v)))
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "b" is now the oldest
    lru.put("c", 3)
    assert lru.get("b") is None
    assert list(lru) == ["a", "c"] and len(lru) == 2
    assert (lru.hits, lru.misses, lru.evictions) == (1, 1, 1)
    lru.put("a", 10)  # a replacement is the most recent
    assert list(lru) == ["c", "a"]
    assert lru.pop("c") == 3 and lru.pop("c") is None
    assert removed == [("b", 2), ("a", 1), ("c", 3)]
    lru.clear()
    assert len(lru) == 0 and removed == [("b", 2), ("a", 1), ("c", 3)]


def test_lru_drops_an_expired_item_on_read_as_a_miss():
    lru: BoundedLRU[str, int] = BoundedLRU(10, expired=lambda v: v < 0)
    lru.put("old", -1)
    lru.put("new", 1)
    assert lru.get("old") is None and lru.get("new") == 1
    assert (lru.hits, lru.misses, lru.expirations, len(lru)) == (1, 1, 1, 1)


def test_concurrent_callers_share_one_run_and_its_result():
    flights: SingleFlight[str, int] = SingleFlight()
    flight, leader = flights.join("k")
    assert leader
    joined = threading.Barrier(5)
    results: list[int] = []

    def wait_for_it() -> None:
        theirs, leads = flights.join("k")
        assert not leads and theirs is flight
        joined.wait(5)
        assert flights.wait(theirs, timeout=5)
        results.append(theirs.result())

    threads = [threading.Thread(target=wait_for_it) for _ in range(4)]
    for t in threads:
        t.start()
    joined.wait(5)  # every waiter is on the flight before its leader runs
    runs: list[int] = []
    assert flights.lead("k", flight, lambda: runs.append(1) or 42) == 42
    for t in threads:
        t.join(5)
    assert runs == [1]
    assert results == [42] * 4
    assert flights.join("k")[1] is True  # released: the next caller leads again


@pytest.mark.parametrize("error", [ValueError("boom"), TimeoutError("the loader's own timeout")])
def test_the_leaders_exception_reaches_the_waiters(error):
    flights: SingleFlight[str, int] = SingleFlight()
    flight, leader = flights.join("k")
    waiter_flight, waiter_leads = flights.join("k")
    assert leader and not waiter_leads and waiter_flight is flight

    def fail() -> int:
        raise error

    with pytest.raises(type(error)):
        flights.lead("k", flight, fail)
    assert flights.wait(flight, timeout=0.01)  # done, not "stuck", even for a TimeoutError
    with pytest.raises(type(error)) as raised:
        flight.result()
    assert raised.value is error


def test_a_stuck_leader_makes_wait_return_false():
    flights: SingleFlight[str, int] = SingleFlight()
    flight, _ = flights.join("k")
    assert flights.wait(flight, timeout=0.01) is False


def test_claim_starts_missing_keys_and_joins_those_in_flight():
    flights: SingleFlight[str, str] = SingleFlight()
    started: list[str] = []

    def start(key: str) -> Future[str]:
        started.append(key)
        return Future()

    owned, joined = flights.claim(["a", "b"], start)
    assert set(owned) == {"a", "b"} and joined == {}
    owned2, joined2 = flights.claim(["b", "c"], start)
    assert set(owned2) == {"c"} and joined2 == {"b": owned["b"]}
    assert started == ["a", "b", "c"]
    flights.release(owned)
    assert set(flights.claim(["a"], start)[0]) == {"a"}


def test_lru_bounded_in_bytes_evicts_the_oldest_and_refuses_a_value_over_the_budget():
    removed: list[str] = []
    lru: BoundedLRU[str, bytes] = BoundedLRU(100, max_bytes=1000, sizeof=len, on_remove=lambda k, v: removed.append(k))
    for key in "abcd":
        assert lru.put(key, b"x" * 300)
    # 4 x 300 > 1000: the oldest went, though the entry bound (100) was far away
    assert list(lru) == ["b", "c", "d"] and lru.bytes == 900 and lru.evictions == 1
    assert lru.get("b") is not None  # "c" is now the oldest
    assert lru.put("e", b"y" * 500)
    # 1400 bytes: the two oldest ("c", then "d") make room
    assert list(lru) == ["b", "e"] and lru.bytes == 800 and removed == ["a", "c", "d"]
    # a value bigger than the whole budget is not stored, and the key's old value goes with it
    assert not lru.put("b", b"z" * 1001)
    assert lru.get("b") is None and lru.oversized == 1 and lru.bytes == 500
    assert list(lru) == ["e"]
    lru.clear()
    assert lru.bytes == 0 and len(lru) == 0


def test_deep_sizeof_counts_what_a_value_reaches():
    from apps.caching.inprocess import deep_sizeof

    small = {"k": "v"}
    big = {"k": ["x" * 10_000, {"n": b"y" * 20_000}]}
    assert deep_sizeof(big) > 30_000 > deep_sizeof(small)
    shared = "s" * 10_000
    assert deep_sizeof([shared, shared]) < 2 * 10_000  # counted once
