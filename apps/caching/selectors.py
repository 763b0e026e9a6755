"""Reads of the caching app: the read-through entry point and its statistics."""

from __future__ import annotations

from apps.caching.cache import aget_or_load, cache_stats, get_or_load
from apps.caching.keys import cache_key, model_fingerprint, participants_cache_tag, session_cache_tag

__all__ = [
    "aget_or_load",
    "cache_key",
    "cache_stats",
    "get_or_load",
    "model_fingerprint",
    "participants_cache_tag",
    "session_cache_tag",
]
