"""The metric families every process records into, defined once (Prometheus names are a public contract).

Recorded where the thing happens, e.g. ``from apps.common.metrics import
WS_CONNECTIONS; WS_CONNECTIONS.inc()``. The ``/metrics`` view, the
multi-process merge and the scrape-time collectors live in ``apps.ops.metrics``.

Multi-process: ``PROMETHEUS_MULTIPROC_DIR`` must be set in a process's
environment before ``prometheus_client`` is first imported (the Procfile, the
Docker entrypoint and the tests' subprocesses do that); every process then
writes its samples to memory-mapped files that ``/metrics`` merges.

A process in a container of its own (a Celery worker, the relay, the
subscribers, the archiver, beat) serves that merge itself on ``METRICS_PORT``
(``process_metrics_serve``): it lives here, not in ``apps.ops``, so the
messaging layer's commands can start it.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def mark_process_dead(pid: int) -> None:
    """Tell the multi-process files a process is gone (its live gauges stop counting)."""
    path = multiprocess_dir()
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


class DefaultRegistryCollector(Collector):
    """This process's own metrics (single-process mode)."""

    def collect(self) -> Iterator[Any]:
        yield from DEFAULT_REGISTRY.collect()


def process_registry() -> CollectorRegistry:
    """The recorded families: merged over ``PROMETHEUS_MULTIPROC_DIR`` when set, else this process's."""
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    if path:
        MultiProcessCollector(registry, path=path)
    else:
        registry.register(DefaultRegistryCollector())
    return registry


def metrics_bearer_ok(authorization: str) -> bool:
    """May this ``Authorization`` header read metrics: no ``METRICS_TOKEN`` set, or ``Bearer <that token>``."""
    token = settings.METRICS_TOKEN
    if not token:
        return True
    given = authorization.removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.encode())


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


_UNAUTHORIZED = b'{"code": "not_authenticated", "message": "A valid metrics bearer token is required.", "details": {}}'


def metrics_serve(*, port: int) -> WSGIServer:
    """Serve this host's merged multi-process metrics on ``port`` (a process in a container of its own).

    The web instances' ``/metrics`` covers processes sharing their directory;
    a worker, relay, subscriber, archiver or beat container has its own, so its
    main process serves it (``METRICS_PORT``), behind the same bearer token as
    the web's ``/metrics`` when ``METRICS_TOKEN`` is set.
    """
    metrics_app = make_wsgi_app(process_registry())

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not metrics_bearer_ok(environ.get("HTTP_AUTHORIZATION", "")):
            start_response("401 Unauthorized", [("Content-Type", "application/json")])
            return [_UNAUTHORIZED]
        return metrics_app(environ, start_response)

    server = make_server("", port, guarded, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="process-metrics", daemon=True).start()
    return server


def process_metrics_serve(*, role: str) -> WSGIServer | None:
    """``metrics_serve`` on ``METRICS_PORT`` when it is set (0: this process serves nothing of its own)."""
    port = settings.METRICS_PORT
    if not port:
        return None
    server = metrics_serve(port=port)
    logger.info("metrics served", extra={"role": role, "port": port})
    return server


# Latency buckets: sub-millisecond cache hits up to slow 10 s requests.
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Batch jobs run from a second (an empty expiry pass) to hours (a full backfill).
_JOB_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
# Outbox rows normally go out within milliseconds of their commit; a relay
# outage or a backlog shows up in the upper buckets.
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Tasks run from milliseconds (realtime inference) to an hour (training).
_TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

# --- HTTP ---------------------------------------------------------------------
HTTP_REQUEST_DURATION = Histogram(
    "ce_http_request_duration_seconds",
    "HTTP request latency by route pattern (not raw path: bounded cardinality), method and status.",
    ["method", "route", "status"],
    buckets=_HTTP_BUCKETS,
)

# --- WebSockets ---------------------------------------------------------------
WS_CONNECTIONS = Gauge(
    "ce_websocket_connections",
    "Open WebSocket connections (summed over live processes).",
    multiprocess_mode="livesum",
)
WS_MESSAGES = Counter(
    "ce_websocket_messages_total",
    "WebSocket frames by direction (in = client to server, out = server to client) and frame type.",
    ["direction", "type"],
)

# --- Tasks --------------------------------------------------------------------
TASK_DURATION = Histogram(
    "ce_task_duration_seconds",
    "Celery task run time by task name, queue and outcome.",
    ["task", "queue", "outcome"],
    buckets=_TASK_BUCKETS,
)
TASKS = Counter(
    "ce_tasks_total",
    "Celery tasks finished by task name, queue and outcome (success, failure, retry, rejected, revoked).",
    ["task", "queue", "outcome"],
)
TASK_QUEUE_WAIT = Histogram(
    "ce_task_queue_wait_seconds",
    "Time a task message waited between publish and the start of its run (when the publisher stamped it).",
    ["queue"],
    buckets=_TASK_BUCKETS,
)

# --- Dead letters (recorded by the archiver; the scrape adds the stored totals) -
DEAD_LETTERS_ARCHIVED = Counter(
    "ce_dead_letters_archived_total",
    "Dead letters this fleet's archiver stored, by source queue and reason.",
    ["queue", "reason"],
)

# --- Cache ----------------------------------------------------------------------
# Per-level hits and misses are read from apps.caching's own counters at scrape
# time (ce_cache_level_hits_total / _misses_total, ScrapeCollector._cache): the
# L1 hit path costs microseconds and stays free of Prometheus bookkeeping.

# --- Inference ------------------------------------------------------------------
INFERENCE_BATCH_SIZE = Histogram(
    "ce_inference_batch_size",
    "Items per micro-batch sent to the model.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
INFERENCE_BATCH_LATENCY = Histogram(
    "ce_inference_batch_latency_seconds",
    "Model forward time per micro-batch.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
INFERENCE_WAIT = Histogram(
    "ce_inference_queue_wait_seconds",
    "Time an item waited in the micro-batcher before its batch ran.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)

# --- Outbox ---------------------------------------------------------------------
OUTBOX_PUBLISHED = Counter(
    "ce_outbox_published_total",
    "Outbox rows the relay published with a broker confirm.",
)
OUTBOX_PUBLISH_LAG = Histogram(
    "ce_outbox_publish_lag_seconds",
    "Time from an outbox row's insert to the broker's confirm of its publish, per row (the relay's lag).",
    buckets=_LAG_BUCKETS,
)
OUTBOX_PUBLISH_FAILURES = Counter(
    "ce_outbox_publish_failures_total",
    "Outbox rows the broker returned or nacked, by what the relay did (retry later, parked for an operator).",
    ["outcome"],
)

# --- Event subscribers (recorded by run_event_subscribers) -----------------------
SUBSCRIBER_EVENTS = Counter(
    "ce_subscriber_events_total",
    "Events the subscriber runner settled, by outcome (applied, duplicate: applied before, dead_lettered).",
    ["outcome"],
)
SUBSCRIBER_BROKER_RECONNECTS = Counter(
    "ce_subscriber_broker_reconnects_total", "Times the subscriber runner reconnected to the broker."
)
SUBSCRIBER_DATABASE_WAITS = Counter(
    "ce_subscriber_database_waits_total",
    "Times the subscriber runner waited for the database to answer again (messages kept in hand).",
)

# --- Beat -------------------------------------------------------------------------
BEAT_RUNS_SENT = Counter(
    "ce_beat_runs_sent_total",
    "Scheduled runs beat sent, by job (the batch job's name, or the task name for a task that is no job).",
    ["job"],
)
BEAT_LEADER = Gauge(
    "ce_beat_leader",
    "1 while this beat holds the beat lock and sends the schedule, 0 while it stands by (summed over live beats).",
    multiprocess_mode="livesum",
)

# --- Batch jobs (recorded by the job tasks; last success: ScrapeCollector) ----------
BATCH_JOB_DURATION = Histogram(
    "ce_batch_job_duration_seconds",
    "Run time of one attempt at a batch job, by job and outcome (succeeded, failed, lock_lost, invalid, "
    "database_error).",
    ["job", "outcome"],
    buckets=_JOB_BUCKETS,
)
BATCH_JOB_RUNS = Counter(
    "ce_batch_job_runs_total",
    "Attempts at a batch job that ended, by job and outcome (as ce_batch_job_duration_seconds).",
    ["job", "outcome"],
)
BATCH_JOB_RUNS_SKIPPED = Counter(
    "ce_batch_job_runs_skipped_total",
    "Scheduled runs that did not happen, by job and reason (already_running: the job's lock was held; "
    "missed_window: beat sent late, after more than one of its times had passed; disabled: the schedule is off; "
    "send_failed: beat could not publish it).",
    ["job", "reason"],
)
