"""A dynamic micro-batcher: many concurrent callers, one forward pass.

Callers ``submit(item)`` and wait on the returned future. One daemon thread
collects waiting items and calls ``batch_fn(items) -> results`` (same length,
same order) when ``max_batch`` items wait or ``max_delay_ms`` has passed since
the first of them arrived, whichever comes first. On CPU a forward pass of 32
short sentences costs about as much as 3 single ones (bench/results/inference.md),
so waiting a few milliseconds for company pays for itself under load and costs
at most ``max_delay_ms`` when a request arrives alone.

A failing input must not fail its batch-mates: when ``batch_fn`` raises for a
batch of several items, each item is retried alone, and only the one that
still fails gets the exception on its future (its task then retries or
dead-letters on its own).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    singles_after_error: int = 0
    failed_items: int = 0
    # The sizes of the most recent batches (bounded), for tests and metrics.
    recent_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))

    def snapshot(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "singles_after_error": self.singles_after_error,
            "failed_items": self.failed_items,
            "mean_batch": (self.items / self.batches) if self.batches else 0.0,
        }


class BatcherClosed(RuntimeError):
    pass


def _observe(size: int, waits: list[float], seconds: float) -> None:
    """Batch size, forward time and item waits into the Prometheus series of apps.common.metrics."""
    from apps.common.metrics import INFERENCE_BATCH_LATENCY, INFERENCE_BATCH_SIZE, INFERENCE_WAIT

    with contextlib.suppress(Exception):  # metrics must never fail a batch
        INFERENCE_BATCH_SIZE.observe(size)
        INFERENCE_BATCH_LATENCY.observe(seconds)
        for wait in waits:
            INFERENCE_WAIT.observe(max(0.0, wait))


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        batch_fn: Callable[[Sequence[In]], Sequence[Out]],
        *,
        max_batch: int = 32,
        max_delay_ms: float = 10.0,
        name: str = "micro-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._batch_fn = batch_fn
        self.max_batch = max_batch
        self.max_delay = max(0.0, max_delay_ms) / 1000.0
        self._queue: deque[tuple[In, Future, float]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.stats = BatcherStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: In) -> Future:
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise BatcherClosed("The batcher is closed.")
            self._queue.append((item, future, time.monotonic()))
            self._cond.notify()
        return future

    def __call__(self, item: In, timeout: float | None = None) -> Out:
        return self.submit(item).result(timeout=timeout)

    def map(self, items: Sequence[In], timeout: float | None = None) -> list[Out]:
        """Submit several items (they may share batches with other callers) and wait for all."""
        futures = [self.submit(item) for item in items]
        return [f.result(timeout=timeout) for f in futures]

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take_batch(self) -> list[tuple[In, Future, float]] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            # The deadline counts from the oldest waiting item's arrival.
            deadline = self._queue[0][2] + self.max_delay
            while len(self._queue) < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            count = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = [entry for entry in batch if entry[1].set_running_or_notify_cancel()]
            if live:
                self._execute(live)

    def _execute(self, batch: list[tuple[In, Future, float]]) -> None:
        items = [item for item, _, _ in batch]
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.recent_sizes.append(len(items))
        started = time.monotonic()
        try:
            results = list(self._batch_fn(items))
            if len(results) != len(items):
                raise RuntimeError(f"batch_fn returned {len(results)} results for {len(items)} inputs")
        except Exception as exc:  # noqa: BLE001 - isolate the bad input below
            if len(batch) == 1:
                self.stats.failed_items += 1
                batch[0][1].set_exception(exc)
                return
            logger.warning("batch of %d failed (%s); retrying items singly", len(batch), exc)
            for entry in batch:
                self.stats.singles_after_error += 1
                self._execute_single(entry)
            return
        _observe(len(items), [started - queued for _, _, queued in batch], time.monotonic() - started)
        for (_, future, _), result in zip(batch, results, strict=True):
            future.set_result(result)

    def _execute_single(self, entry: tuple[In, Future, float]) -> None:
        item, future, _ = entry
        try:
            result = list(self._batch_fn([item]))
            if len(result) != 1:
                raise RuntimeError("batch_fn returned the wrong number of results")
            future.set_result(result[0])
        except Exception as exc:  # noqa: BLE001 - this item alone fails
            self.stats.failed_items += 1
            future.set_exception(exc)
