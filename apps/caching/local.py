"""L1: a bounded in-process LRU with per-entry TTL and generation fencing.

Bounded twice: ``max_entries`` items and ``max_bytes`` of estimated size
(``CACHE_L1_MAX_ENTRIES``, ``CACHE_L1_MAX_BYTES``). An entry's size is its
encoded blob's length (the common case: callers get a copy per hit), or a
``deep_sizeof`` estimate of the object kept as is (``copy=False``), plus its
key and a fixed per-entry overhead; a value larger than the whole budget is
not kept in L1 at all (L2 still has it).

The entries live in a ``BoundedLRU`` (``apps.caching.inprocess``); this module
adds the TTL, the tag index and the fencing on top, all under the LRU's lock,
held only for dictionary work (never across I/O or an ``await``), which also
makes it safe to call from an asyncio event loop: a critical section is a few
hundred nanoseconds.

Generation fencing is what stops a slow loader from writing an old value after
an invalidation: a caller takes ``token(key, tags)`` *before* it reads the
lower levels and passes it to ``set``; any invalidation of that key, of one of
its tags, of a pattern, or a ``clear`` in between changes the token and the
``set`` is refused. Counters live in fixed-size stripes (hash of the key or
tag), so memory stays bounded; a collision only refuses a harmless fill.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from apps.caching.inprocess import BoundedLRU, deep_sizeof

_STRIPES = 4096
# The entry object, its key's slot in the LRU and the tag index, roughly (measured
# with sys.getsizeof on CPython 3.12: about 300 bytes for a two-tag entry).
ENTRY_OVERHEAD_BYTES = 300


@dataclass(slots=True)
class Entry:
    value: Any
    expires_at: float
    tags: tuple[str, ...]
    # True: ``value`` is the encoded blob (callers get their own copy on each hit).
    encoded: bool
    # Estimated bytes held (value, key, bookkeeping): what counts against max_bytes.
    size: int = 0


Token = tuple[int, int, tuple[int, ...]]


def _expired(entry: Entry) -> bool:
    return entry.expires_at <= time.monotonic()


def _entry_size(entry: Entry) -> int:
    return entry.size


def entry_size(key: str, value: Any, *, tags: tuple[str, ...], encoded: bool) -> int:
    """The bytes an L1 entry counts as: its blob's length (or a deep estimate of the object), key, tags, overhead."""
    body = len(value) if encoded and isinstance(value, bytes | bytearray) else deep_sizeof(value)
    return body + len(key) + sum(len(t) for t in tags) + ENTRY_OVERHEAD_BYTES


class LocalCache:
    def __init__(self, *, max_entries: int, max_bytes: int | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: BoundedLRU[str, Entry] = BoundedLRU(
            max_entries, max_bytes=max_bytes, sizeof=_entry_size, expired=_expired, on_remove=self._unindex
        )
        self._by_tag: dict[str, set[str]] = {}
        self._lock = self._entries.lock
        self._key_gen = [0] * _STRIPES
        self._tag_gen = [0] * _STRIPES
        self._epoch = 0
        self.refused_fills = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- counters (kept by the LRU) ----------------------------------------
    @property
    def hits(self) -> int:
        return self._entries.hits

    @property
    def misses(self) -> int:
        return self._entries.misses

    @property
    def evictions(self) -> int:
        return self._entries.evictions

    @property
    def expirations(self) -> int:
        return self._entries.expirations

    @property
    def bytes(self) -> int:
        """The estimated bytes held now (0 without a byte budget)."""
        return self._entries.bytes

    @property
    def oversized(self) -> int:
        """Values refused because each alone was over ``max_bytes``."""
        return self._entries.oversized

    # -- reads -------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        """The live entry, made the most recent; an expired one is dropped and reads as a miss."""
        return self._entries.get(key)

    def token(self, key: str, tags: Iterable[str] = ()) -> Token:
        with self._lock:
            return (
                self._epoch,
                self._key_gen[hash(key) % _STRIPES],
                tuple(self._tag_gen[hash(t) % _STRIPES] for t in tags),
            )

    def _token_locked(self, key: str, tags: tuple[str, ...]) -> Token:
        return (
            self._epoch,
            self._key_gen[hash(key) % _STRIPES],
            tuple(self._tag_gen[hash(t) % _STRIPES] for t in tags),
        )

    # -- writes ------------------------------------------------------------
    def set(self, key: str, value: Any, *, ttl: float, tags: tuple[str, ...], token: Token, encoded: bool) -> bool:
        """Store unless an invalidation happened since ``token`` was taken, or the value alone is over ``max_bytes``."""
        if ttl <= 0:
            return False
        # Sized before the lock: a deep estimate walks the object.
        size = entry_size(key, value, tags=tags, encoded=encoded) if self.max_bytes is not None else 0
        with self._lock:
            if self._token_locked(key, tags) != token:
                self.refused_fills += 1
                return False
            self._entries.pop(key)
            entry = Entry(value, time.monotonic() + ttl, tags, encoded, size)
            # Evicts the least recently used past max_entries or max_bytes; refuses a value over max_bytes.
            if not self._entries.put(key, entry):
                return False
            for tag in tags:
                self._by_tag.setdefault(tag, set()).add(key)
            return True

    def _unindex(self, key: str, entry: Entry) -> None:
        """The LRU dropped ``key`` (under its lock): forget it in the tag index."""
        for tag in entry.tags:
            members = self._by_tag.get(tag)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._by_tag[tag]

    # -- invalidation ------------------------------------------------------
    def invalidate_keys(self, keys: Iterable[str]) -> int:
        removed = 0
        with self._lock:
            for key in keys:
                self._key_gen[hash(key) % _STRIPES] += 1
                if self._entries.pop(key) is not None:
                    removed += 1
        return removed

    def invalidate_tags(self, tags: Iterable[str]) -> int:
        removed = 0
        with self._lock:
            for tag in tags:
                self._tag_gen[hash(tag) % _STRIPES] += 1
                for key in list(self._by_tag.get(tag, ())):
                    self._entries.pop(key)
                    removed += 1
        return removed

    def invalidate_pattern(self, pattern: str) -> int:
        with self._lock:
            self._epoch += 1
            doomed = [k for k in self._entries if fnmatchcase(k, pattern)]
            for key in doomed:
                self._entries.pop(key)
        return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()
            self._by_tag.clear()
