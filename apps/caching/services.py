"""Cache invalidation: the writes of the caching app.

Call these from a service after (or inside) the transaction that changed the
data. Inside a transaction they invalidate twice: at once, and again after
commit. The first pass costs one extra Redis round trip and makes the change
visible to the writer's own connection at once (and to tests that never
commit); the second is the one that counts, because a reader that refilled
the cache from the not-yet-committed state in between is fenced or evicted by
it. A rolled-back transaction leaves only the harmless first pass.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from apps.caching.cache import get_cache


def _invalidate(*, keys: tuple[str, ...] = (), tags: tuple[str, ...] = (), pattern: str | None = None) -> None:
    cache = get_cache()
    cache.invalidate(keys=keys, tags=tags, pattern=pattern)
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: get_cache().invalidate(keys=keys, tags=tags, pattern=pattern))


def cache_invalidate_keys(*, keys: Iterable[str]) -> None:
    """Drop these logical keys on every level in every process."""
    keys = tuple(keys)
    if keys:
        _invalidate(keys=keys)


def cache_invalidate_tags(*, tags: Iterable[str]) -> None:
    """Drop every entry stored with one of these tags, everywhere."""
    tags = tuple(tags)
    if tags:
        _invalidate(tags=tags)


def cache_invalidate_pattern(*, pattern: str) -> None:
    """Drop every logical key matching a glob (``ctx.snapshot:v1:*``), everywhere.

    Costs a SCAN of this deployment's cache keys in Redis: for deploys and
    operators, not for a request path.
    """
    if pattern:
        _invalidate(pattern=pattern)
