"""The versioned key scheme.

A logical key is ``<namespace>:v<version>:<parts...>``. The namespace version is
bumped in code whenever the shape of the cached value changes, so a deploy that
changes a value's shape never reads one written by the old code (old keys just
age out). Values that are pickled model instances also carry a fingerprint of
the model's concrete fields, so adding or renaming a column changes the key
without anyone having to remember to bump a number.

The Redis key adds the deployment's ``REDIS_KEY_PREFIX`` and the scheme version
of this module (``SCHEME``): ``<prefix>:cache:<SCHEME>:v:<logical key>``.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

from django.db import models

# Bumped when the Redis layout itself (value encoding, gen/tag keys) changes.
SCHEME = "s1"


@cache
def model_fingerprint(model: type[models.Model]) -> str:
    """Short hash of a model's concrete columns: changes when its pickled shape does."""
    names = ",".join(f"{f.attname}:{f.get_internal_type()}" for f in model._meta.concrete_fields)
    return hashlib.blake2b(f"{model._meta.label}|{names}".encode(), digest_size=4).hexdigest()


def cache_key(namespace: str, *parts: object, version: int | str = 1) -> str:
    """``cache_key("ctx.session", sid, version=1)`` -> ``"ctx.session:v1:<sid>"``."""
    if not namespace or ":" in namespace:
        raise ValueError("namespace must be non-empty and contain no ':'")
    return ":".join([namespace, f"v{version}", *(str(p) for p in parts)])


# Tags of the collaboration-session views (``apps.context.selectors`` caches
# under them; the invalidation subscriber drops them on the session's events).
def session_cache_tag(session_id: Any) -> str:
    return f"ctx.session:{session_id}"


def participants_cache_tag(session_id: Any) -> str:
    return f"ctx.participants:{session_id}"
