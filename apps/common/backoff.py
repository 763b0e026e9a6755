"""The one backoff: exponential, capped, with jitter (AWS's "full jitter" by default)."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, *, base: float, cap: float, floor: float = 0.0) -> float:
    """Seconds to wait before try ``attempt + 1``: uniform between ``floor`` and 1 times the ceiling.

    The ceiling is ``base * 2 ** (attempt - 1)``, capped at ``cap``; attempt 1
    waits up to ``base``. ``floor=0.5`` ("equal jitter") keeps a retry from
    coming back at once.
    """
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return random.uniform(ceiling * floor, ceiling)  # noqa: S311 - jitter, not a secret
