from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from django.conf import settings

from apps.caching.cache import MultiLevelCache


@pytest.fixture
def cache_prefix() -> str:
    # Inside this run's prefix (cleaned after each test), unique per test.
    return f"{settings.REDIS_KEY_PREFIX}:t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_cache(cache_prefix: str) -> Iterator[Callable[..., MultiLevelCache]]:
    """Cache instances sharing one Redis namespace.

    Two instances behave like two processes (own L1, own bus subscription, own
    origin); tests/integration/caching proves the same with real processes.
    """
    made: list[MultiLevelCache] = []

    def factory(*, wait: bool = True, **options: object) -> MultiLevelCache:
        options.setdefault("redis_url", settings.REDIS_URL)
        options.setdefault("prefix", cache_prefix)
        cache = MultiLevelCache(**options)
        made.append(cache)
        if wait:
            assert cache.wait_ready(5), "invalidation bus did not connect"
        return cache

    yield factory
    for cache in made:
        cache.close()
