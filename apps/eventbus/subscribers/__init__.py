"""Event subscribers: consumers of ``events.<name>`` queues, bound by routing-key pattern.

A subscriber is a ``Subscriber`` subclass with a ``name``, ``patterns`` and
``handle(event)`` (``runner.py`` runs it: dedupe by ``event_id``, the handler
inside a transaction, ack after commit, a failing event dead-lettered alone).

Each domain app owns its subscribers and registers them from its
``AppConfig.ready`` with ``subscriber_register`` (``apps/ai/subscribers.py``,
``apps/caching/subscribers.py``, ``apps/batch/subscribers.py``), so this
messaging layer never imports the domains above it. A deployment, a test or a
benchmark may run another set with the ``EVENTBUS_SUBSCRIBERS`` setting or env
var: dotted paths of ``Subscriber`` classes, read when the runner starts.
"""

from __future__ import annotations

from typing import TypeVar

from django.conf import settings
from django.utils.module_loading import import_string

from apps.eventbus.subscribers.base import Subscriber
from project import env

_registry: dict[str, type[Subscriber]] = {}
S = TypeVar("S", bound=type[Subscriber])


def subscriber_register(cls: S) -> S:
    """Class decorator: ``cls`` runs in every subscriber process (queue ``events.<cls.name>``)."""
    existing = _registry.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"two subscribers are named {cls.name!r}: {existing.__qualname__} and {cls.__qualname__}")
    _registry[cls.name] = cls
    return cls


def registered_subscribers() -> list[type[Subscriber]]:
    """The subscribers this process runs, ordered by name."""
    # The env var (comma-separated dotted paths) lets a benchmark or a test run
    # a subset, or a class of its own, without a settings change.
    override = env.get_list("EVENTBUS_SUBSCRIBERS", []) or settings.EVENTBUS_SUBSCRIBERS
    if override:
        return [import_string(path) for path in override]
    return [_registry[name] for name in sorted(_registry)]


__all__ = ["Subscriber", "registered_subscribers", "subscriber_register"]
