"""Per-connection rate limiting."""

from __future__ import annotations

import time
from collections import deque


class TokenBucket:
    """``rate`` frames per second sustained, bursts up to ``burst``."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after_ms(self) -> int:
        return max(1, int((1.0 - self.tokens) / self.rate * 1000))


class StrikeCounter:
    """Refused frames within a sliding window; too many means the client ignores ``rate_limited``."""

    def __init__(self, *, limit: int, window_s: float = 10.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self.hits: deque[float] = deque()

    def strike(self) -> bool:
        """Record one refusal; True when the limit is reached (close the connection)."""
        now = time.monotonic()
        self.hits.append(now)
        while self.hits and self.hits[0] < now - self.window_s:
            self.hits.popleft()
        return len(self.hits) >= self.limit
