"""In-process building blocks: a bounded LRU and single-flight, shared by every cache of a process.

``BoundedLRU`` is the one least-recently-used map: the L1 of the multi-level
cache (``apps.caching.local``) keeps its entries in one, and so does the
embedding cache of the inference worker. It is bounded in entries and,
optionally, in bytes (``max_bytes``, each value's size estimated once, when
it is stored): a count alone lets a few large values take a process's memory. ``SingleFlight`` is the one "one
computation per key at a time" mechanism: the multi-level cache's loads and
the embedding batches both go through one. Neither does I/O under its lock.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


# The walk visits at most this many objects: sizing a value must never cost
# more than it is worth (a 10,000-object walk is about a millisecond).
_DEEP_SIZE_MAX_OBJECTS = 10_000


def deep_sizeof(value: object) -> int:
    """An estimate of the bytes ``value`` holds: ``sys.getsizeof`` summed over what it reaches.

    Follows dicts, lists, tuples, sets, ``__dict__`` and ``__slots__``; each
    object is counted once, and past ``_DEEP_SIZE_MAX_OBJECTS`` objects the
    walk stops (the estimate is then low, never unbounded work). NumPy arrays
    report their buffer through ``sys.getsizeof``.
    """
    seen: set[int] = set()
    stack = [value]
    total = 0
    while stack and len(seen) < _DEEP_SIZE_MAX_OBJECTS:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, str | bytes | bytearray | int | float | bool | type(None)):
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        else:
            attrs = getattr(obj, "__dict__", None)
            if isinstance(attrs, dict):
                stack.append(attrs)
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    stack.append(getattr(obj, slot))
    return total


class BoundedLRU(Generic[K, V]):
    """A thread-safe map of at most ``max_entries`` items (and ``max_bytes``) that drops the least recently used first.

    ``get`` counts a hit or a miss and makes the item the most recent; ``put``
    inserts (or replaces) an item as the most recent, then evicts the oldest
    while over either bound. ``None`` is not a storable value (``get`` and
    ``pop`` return it for "absent").

    ``max_bytes``, if given, bounds the sum of the items' sizes: ``sizeof(value)``
    (default ``deep_sizeof``), asked once per ``put``, outside the lock. A value
    bigger than ``max_bytes`` by itself is not stored (``put`` returns False,
    counted in ``oversized``), and the key's older value is dropped with it.

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
        max_bytes: int | None = None,
        sizeof: Callable[[V], int] | None = None,
        expired: Callable[[V], bool] | None = None,
        on_remove: Callable[[K, V], None] | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._sizeof: Callable[[V], int] = sizeof if sizeof is not None else deep_sizeof
        self._data: OrderedDict[K, V] = OrderedDict()
        self._sizes: dict[K, int] = {}
        self._expired = expired
        self._on_remove = on_remove
        self.lock = threading.RLock()
        self.bytes = 0  # the sum of the stored items' sizes (0 when max_bytes is None: not measured)
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0
        self.oversized = 0

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

    def put(self, key: K, value: V) -> bool:
        """Store ``value`` as the most recent; False when it alone is over ``max_bytes`` (not stored)."""
        size = self._sizeof(value) if self.max_bytes is not None else 0
        with self.lock:
            if key in self._data:
                self._drop(key)
            if self.max_bytes is not None and size > self.max_bytes:
                self.oversized += 1
                return False
            self._data[key] = value
            if self.max_bytes is not None:
                self._sizes[key] = size
                self.bytes += size
            while len(self._data) > self.max_entries or (self.max_bytes is not None and self.bytes > self.max_bytes):
                oldest = next(iter(self._data))
                self._drop(oldest)
                self.evictions += 1
            return True

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
            self._sizes.clear()
            self.bytes = 0

    def _drop(self, key: K) -> V | None:
        value = self._data.pop(key, None)
        self.bytes -= self._sizes.pop(key, 0)
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
