"""L1: a bounded in-process LRU with per-entry TTL and generation fencing.

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

from apps.caching.inprocess import BoundedLRU

_STRIPES = 4096


@dataclass(slots=True)
class Entry:
    value: Any
    expires_at: float
    tags: tuple[str, ...]
    # True: ``value`` is the encoded blob (callers get their own copy on each hit).
    encoded: bool


Token = tuple[int, int, tuple[int, ...]]


def _expired(entry: Entry) -> bool:
    return entry.expires_at <= time.monotonic()


class LocalCache:
    def __init__(self, *, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: BoundedLRU[str, Entry] = BoundedLRU(max_entries, expired=_expired, on_remove=self._unindex)
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
        """Store unless an invalidation happened since ``token`` was taken."""
        if ttl <= 0:
            return False
        with self._lock:
            if self._token_locked(key, tags) != token:
                self.refused_fills += 1
                return False
            self._entries.pop(key)
            entry = Entry(value, time.monotonic() + ttl, tags, encoded)
            for tag in tags:
                self._by_tag.setdefault(tag, set()).add(key)
            self._entries.put(key, entry)  # evicts the least recently used past max_entries
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
