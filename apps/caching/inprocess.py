"""In-process building blocks: a bounded LRU and single-flight, shared by every cache of a process.

``BoundedLRU`` is the one least-recently-used map: the L1 of the multi-level
cache (``apps.caching.local``) keeps its entries in one, and so does the
embedding cache of the inference worker. ``SingleFlight`` is the one "one
computation per key at a time" mechanism: the multi-level cache's loads and
the embedding batches both go through one. Neither does I/O under its lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


class BoundedLRU(Generic[K, V]):
    """A thread-safe map of at most ``max_entries`` items that drops the least recently used first.

    ``get`` counts a hit or a miss and makes the item the most recent; ``put``
    inserts (or replaces) an item as the most recent, then evicts the oldest
    while over the bound. ``None`` is not a storable value (``get`` and ``pop``
    return it for "absent").

    ``expired(value)``, if given, is asked on each ``get`` that finds an item:
    true drops the item and reads as a miss (counted in ``expirations``).
    ``on_remove(key, value)``, if given, is called for every item that leaves
    other than by ``clear`` (evicted, expired, popped, replaced), under the lock.

    ``lock`` is re-entrant, so an owner may hold it around several calls to make
    them one atomic step (and keep its own bookkeeping in step with the map).
    """

    def __init__(
        self,
        max_entries: int,
        *,
        expired: Callable[[V], bool] | None = None,
        on_remove: Callable[[K, V], None] | None = None,
    ) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[K, V] = OrderedDict()
        self._expired = expired
        self._on_remove = on_remove
        self.lock = threading.RLock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        with self.lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            if self._expired is not None and self._expired(value):
                self._drop(key)
                self.expirations += 1
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: K, value: V) -> None:
        with self.lock:
            if key in self._data:
                self._drop(key)
            self._data[key] = value
            while len(self._data) > self.max_entries:
                oldest = next(iter(self._data))
                self._drop(oldest)
                self.evictions += 1

    def pop(self, key: K) -> V | None:
        with self.lock:
            return self._drop(key)

    def __iter__(self) -> Iterator[K]:
        """The keys, oldest first, as they were when iteration began (a snapshot)."""
        with self.lock:
            keys = list(self._data)
        return iter(keys)

    def clear(self) -> None:
        with self.lock:
            self._data.clear()

    def _drop(self, key: K) -> V | None:
        value = self._data.pop(key, None)
        if value is not None and self._on_remove is not None:
            self._on_remove(key, value)
        return value


class SingleFlight(Generic[K, T]):
    """At most one computation per key in flight in this process; callers that come meanwhile share its outcome.

    A flight is a ``concurrent.futures.Future``. ``claim`` gives each key either
    to the caller (a new flight, made by ``start``) or to the flight already
    under way; the caller owning a flight must ``release`` its key once the
    future has, or will by itself get, its outcome. ``lead`` is the common case
    for one key: run a function as the owner, publish its result or exception.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[K, Future[T]] = {}

    def claim(
        self, keys: Iterable[K], start: Callable[[K], Future[T]]
    ) -> tuple[dict[K, Future[T]], dict[K, Future[T]]]:
        """``(owned, joined)``: the flights started here by ``start(key)`` and those already in flight.

        ``start`` runs under the lock, so two callers never start one key; it
        must not block. If it raises, the keys claimed before stay claimed.
        """
        owned: dict[K, Future[T]] = {}
        joined: dict[K, Future[T]] = {}
        with self._lock:
            for key in keys:
                existing = self._flights.get(key)
                if existing is not None:
                    joined[key] = existing
                else:
                    future = start(key)
                    self._flights[key] = future
                    owned[key] = future
        return owned, joined

    def join(self, key: K) -> tuple[Future[T], bool]:
        """The key's flight and whether this caller owns it (then it must ``lead`` it)."""
        owned, joined = self.claim((key,), _new_future)
        return (owned[key], True) if owned else (joined[key], False)

    def release(self, keys: Iterable[K]) -> None:
        with self._lock:
            for key in keys:
                self._flights.pop(key, None)

    def lead(self, key: K, flight: Future[T], fn: Callable[[], T]) -> T:
        """Run ``fn`` for an owned flight: release the key, then hand its result (or exception) to the waiters."""
        try:
            result = fn()
        except BaseException as exc:
            self.release((key,))
            flight.set_exception(exc)
            raise
        self.release((key,))
        flight.set_result(result)
        return result

    @staticmethod
    def wait(flight: Future[T], timeout: float) -> bool:
        """Whether the flight has its outcome within ``timeout`` seconds (read it with ``flight.result()``)."""
        try:
            flight.exception(timeout=timeout)
        except TimeoutError:
            return False
        return True


def _new_future(_key: object) -> Future:
    return Future()
