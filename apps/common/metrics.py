"""The metric families every process records into, defined once (Prometheus names are a public contract).

Recorded where the thing happens, e.g. ``from apps.common.metrics import
WS_CONNECTIONS; WS_CONNECTIONS.inc()``. The ``/metrics`` view, the
multi-process merge and the scrape-time collectors live in ``apps.ops.metrics``.

Multi-process: ``PROMETHEUS_MULTIPROC_DIR`` must be set in a process's
environment before ``prometheus_client`` is first imported (the Procfile, the
Docker entrypoint and the tests' subprocesses do that); every process then
writes its samples to memory-mapped files that ``/metrics`` merges.
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def mark_process_dead(pid: int) -> None:
    """Tell the multi-process files a process is gone (its live gauges stop counting)."""
    path = multiprocess_dir()
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


# Latency buckets: sub-millisecond cache hits up to slow 10 s requests.
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
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
