"""The multi-level cache's own measurements: event counters and latency histograms.

In-process and lock-protected; ``MultiLevelCache.stats`` reads them for
``cache_stats()`` (and from there /metrics). A forked child starts new ones.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOADER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Histogram:
    """Cumulative buckets (Prometheus-style) plus a window of recent samples for quantiles."""

    def __init__(self, buckets: tuple[float, ...], window: int = 4096) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0
        self.recent: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.count += 1
            self.total += value
            self.maximum = max(self.maximum, value)
            self.recent.append(value)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            recent = sorted(self.recent)
            cumulative = list(itertools.accumulate(self.counts))
            return {
                "count": self.count,
                "sum": self.total,
                "max": self.maximum,
                "p50": _quantile(recent, 0.50),
                "p99": _quantile(recent, 0.99),
                "buckets": {**{str(b): c for b, c in zip(self.buckets, cumulative, strict=False)}, "+Inf": self.count},
            }


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Counters:
    l2_hits: int = 0
    l2_misses: int = 0
    l2_errors: int = 0
    loads: int = 0
    negative_hits: int = 0
    negative_stores: int = 0
    l1_bypassed: int = 0
    singleflight_waits: int = 0
    lock_waits: int = 0
    stale_fills_refused: int = 0
    invalidations_sent: int = 0
    invalidations_received: int = 0
    invalidations_queued: int = 0
    invalidations_delivered_late: int = 0
    invalidations_caught_up: int = 0
    pending_overflows: int = 0
    catchup_clears: int = 0
    bus_reconnects: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def incr(self, name: str, by: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + by)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "lock"}
