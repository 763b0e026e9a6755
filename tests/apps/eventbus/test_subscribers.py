"""The subscriber registry: the domain apps register their subscribers from ``AppConfig.ready``."""

from __future__ import annotations

from apps.eventbus.subscribers import registered_subscribers


def test_the_platform_subscribers_are_registered():
    assert [cls.name for cls in registered_subscribers()] == ["activity", "ai_trigger", "cache_invalidation"]
