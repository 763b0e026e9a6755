"""Every Prometheus metric the platform exports, defined in one place.

Multi-process: when ``PROMETHEUS_MULTIPROC_DIR`` is set in a process's
environment *before* ``prometheus_client`` is first imported (the Procfile,
the Docker entrypoint and the tests' subprocesses do that), every process
(uvicorn instances, Celery prefork children, relay, archiver) writes its
samples to memory-mapped files in that directory and ``/metrics`` merges them.
The directory must be emptied when the fleet on that host starts (the Docker
entrypoint does it); a Celery child that exits is marked dead so its live
gauges stop counting (``mark_process_dead``).

Two kinds of figures:

* **Recorded** (the families in ``apps.common.metrics``): incremented where
  the thing happens, in any layer.
* **Collected at scrape time** (:class:`ScrapeCollector`): queue depth,
  consumers and oldest-message age per queue (``*.dlq`` included), dead letters
  by reason, outbox lag, cache stats. They are read from RabbitMQ, PostgreSQL
  and Redis when ``/metrics`` is requested, so every scrape reports the
  current state however many web instances there are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from celery import signals
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from apps.common.metrics import metrics_bearer_ok, metrics_serve, process_metrics_serve, process_registry

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _scrape_read(what: str, read: Callable[[], T]) -> T | None:
    """``read()``, or None with a warning: one source down must not break the rest of the scrape."""
    try:
        return read()
    except Exception:
        logger.warning("%s unavailable at scrape", what, exc_info=True)
        return None


class ScrapeCollector(Collector):
    """Figures read from the services at scrape time (each part fails on its own)."""

    def collect(self) -> Iterator[Any]:
        started = time.monotonic()
        yield from self._queues()
        yield from self._dead_letters()
        yield from self._outbox()
        yield from self._cache()
        yield from self._batch_jobs()
        duration = GaugeMetricFamily(
            "ce_scrape_collect_seconds", "Time the scrape-time collectors took (RabbitMQ, PostgreSQL, Redis reads)."
        )
        duration.add_metric([], time.monotonic() - started)
        yield duration

    def _queues(self) -> Iterator[Any]:
        from apps.ops.fleet import figures as fleet

        depth = GaugeMetricFamily(
            "ce_queue_depth", "Ready messages in the queue (passive queue.declare).", labels=["queue"]
        )
        consumers = GaugeMetricFamily("ce_queue_consumers", "Consumers attached to the queue.", labels=["queue"])
        age = GaugeMetricFamily(
            "ce_queue_oldest_message_age_seconds",
            "Age of the oldest ready message (see apps/ops/fleet/figures.py for how it is derived; "
            "absent when unknown).",
            labels=["queue", "source"],
        )
        up = GaugeMetricFamily("ce_queue_stats_up", "1 when the broker answered the queue statistics read.")
        try:
            stats = fleet.queue_stats_collect()
        except Exception:  # a broker outage must not break the rest of the scrape
            logger.warning("queue stats unavailable at scrape", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for stat in stats:
            if stat.depth is None:
                continue
            depth.add_metric([stat.name], stat.depth)
            consumers.add_metric([stat.name], stat.consumers or 0)
            if stat.oldest_age_seconds is not None:
                age.add_metric([stat.name, stat.oldest_age_source or "unknown"], stat.oldest_age_seconds)
        yield from (up, depth, consumers, age)

    def _dead_letters(self) -> Iterator[Any]:
        from apps.ops.deadletters.selectors import dead_letter_counts_by_reason

        rows = _scrape_read("dead letter counts", dead_letter_counts_by_reason)
        if rows is None:
            return
        family = CounterMetricFamily(
            "ce_dead_letters",
            "Dead letters stored (PostgreSQL), by source queue and reason.",
            labels=["queue", "reason"],
        )
        for (queue, reason), count in sorted(rows.items()):
            family.add_metric([queue, reason], count)
        yield family

    def _outbox(self) -> Iterator[Any]:
        from apps.eventbus.selectors import outbox_lag

        lag = _scrape_read("outbox lag", outbox_lag)
        if lag is None:
            return
        pending = GaugeMetricFamily("ce_outbox_pending", "Outbox rows committed but not yet published.")
        pending.add_metric([], float(lag.pending))
        parked = GaugeMetricFamily("ce_outbox_parked", "Outbox rows the relay gave up on (need an operator).")
        parked.add_metric([], float(lag.parked))
        oldest = GaugeMetricFamily("ce_outbox_lag_seconds", "Age of the oldest unpublished outbox row (0 when none).")
        oldest.add_metric([], lag.oldest_pending_age_seconds)
        yield from (pending, parked, oldest)

    def _cache(self) -> Iterator[Any]:
        from apps.caching.selectors import cache_stats

        stats = _scrape_read("cache stats", cache_stats)
        if stats is None:
            return
        if not isinstance(stats, dict):
            return
        family = GaugeMetricFamily(
            "ce_cache_stat",
            "Cache statistics reported by apps.caching's cache_stats() (this process).",
            labels=["stat"],
        )
        for key, value in _flatten(stats):
            if isinstance(value, int | float) and not isinstance(value, bool):
                family.add_metric([key], float(value))
        yield family
        hits = CounterMetricFamily(
            "ce_cache_level_hits", "Cache hits per level (the scraped process).", labels=["level"]
        )
        misses = CounterMetricFamily(
            "ce_cache_level_misses", "Cache misses per level (the scraped process).", labels=["level"]
        )
        for level in ("l1", "l2", "negative"):
            part = stats.get(level)
            if isinstance(part, dict):
                if isinstance(part.get("hits"), int | float):
                    hits.add_metric([level], float(part["hits"]))
                if isinstance(part.get("misses"), int | float):
                    misses.add_metric([level], float(part["misses"]))
        l3 = stats.get("l3")
        if isinstance(l3, dict) and isinstance(l3.get("loads"), int | float):
            hits.add_metric(["loader"], float(l3["loads"]))
        yield hits
        yield misses

    def _batch_jobs(self) -> Iterator[Any]:
        """Each job's last success (from its ``JobRun`` rows, so it survives restarts and counts ``run_job``
        runs too) and its schedule's interval: together they say a job has not succeeded for too long."""
        from workers.batch.beat import schedule_intervals

        last = _scrape_read("batch job last success", _job_last_success)
        if last is not None:
            family = GaugeMetricFamily(
                "ce_batch_job_last_success_timestamp_seconds",
                "Unix time the job's last successful run finished (absent until one has).",
                labels=["job"],
            )
            for job, timestamp in sorted(last.items()):
                family.add_metric([job], timestamp)
            yield family
        intervals = _scrape_read("beat schedule intervals", schedule_intervals)
        if intervals is not None:
            family = GaugeMetricFamily(
                "ce_batch_job_schedule_interval_seconds",
                "Seconds between the job's scheduled runs (enabled beat schedules; the shortest when several).",
                labels=["job"],
            )
            for job, seconds in sorted(intervals.items()):
                family.add_metric([job], seconds)
            yield family


def _job_last_success() -> dict[str, float]:
    from django.db.models import Max

    from apps.batch.selectors import job_run_list

    rows = job_run_list(status="succeeded").order_by().values("job_name").annotate(last=Max("finished_at"))
    return {row["job_name"]: row["last"].timestamp() for row in rows if row["last"] is not None}


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}_")
        else:
            yield name, value


def metrics_render(*, include_scrape: bool = True) -> bytes:
    """The text exposition ``/metrics`` serves."""
    registry = process_registry()
    if include_scrape:
        registry.register(ScrapeCollector())
    return generate_latest(registry)


@signals.worker_ready.connect(weak=False)
def _serve_worker_metrics(**_: Any) -> None:
    process_metrics_serve(role="worker")


@signals.beat_init.connect(weak=False)
def _serve_beat_metrics(**_: Any) -> None:
    process_metrics_serve(role="beat")


# The names callers know (the web's /metrics view, the tests); both live in apps.common.metrics now.
worker_metrics_serve = metrics_serve
__all__ = ["metrics_bearer_ok", "metrics_render", "worker_metrics_serve"]
