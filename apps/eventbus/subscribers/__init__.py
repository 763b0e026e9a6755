"""Event subscribers: consumers of ``events.<name>`` queues, bound by routing-key pattern.

A subscriber is a ``Subscriber`` subclass with a ``name``, ``patterns`` and
``handle(event)`` (``runner.py`` runs it: dedupe by ``event_id``, the handler
inside a transaction, ack after commit, a failing event dead-lettered alone).
The platform's subscribers are listed in ``DEFAULT_SUBSCRIBERS``; a deployment
may replace the list with the ``EVENTBUS_SUBSCRIBERS`` setting or env var (dotted paths).
"""

from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

from apps.eventbus.subscribers.base import Subscriber
from project import env

DEFAULT_SUBSCRIBERS: tuple[str, ...] = (
    "apps.eventbus.subscribers.activity.ActivitySubscriber",
    "apps.eventbus.subscribers.ai_trigger.AiTriggerSubscriber",
    "apps.eventbus.subscribers.cache_invalidation.CacheInvalidationSubscriber",
)


def registered_subscribers() -> list[type[Subscriber]]:
    # The env var (comma-separated dotted paths) lets a benchmark or a
    # deployment run a subset without a settings change.
    override = env.get_list("EVENTBUS_SUBSCRIBERS", [])
    paths = override or getattr(settings, "EVENTBUS_SUBSCRIBERS", DEFAULT_SUBSCRIBERS)
    return [import_string(path) for path in paths]


def __getattr__(name: str) -> list[str]:
    # ``SUBSCRIBERS``: the registered names, read lazily (settings may not be
    # configured at import time); apps.ops lists their queues from it.
    if name == "SUBSCRIBERS":
        return [cls.name for cls in registered_subscribers()]
    raise AttributeError(name)


__all__ = ["DEFAULT_SUBSCRIBERS", "Subscriber", "registered_subscribers"]
