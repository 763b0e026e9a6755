"""Fleet figures: per-queue depth, consumers, rates, oldest message age, and scaling advice.

Long on purpose: most of its length is the definition of each figure below;
the figures feed each other (rates into backlog drain time, service time and
arrival rate into the M/M/c advice), so they are computed in one place.

What each figure means and where it comes from (the shared broker has no
management plugin, so everything works over plain AMQP plus counters we keep):

* ``depth``: *ready* messages in the queue, from a passive ``queue.declare``
  (it answers message and consumer counts without creating anything). Messages
  a worker has prefetched but not yet acked are not in it.
* ``consumers``: AMQP consumers on the queue (one per Celery worker *node* and
  queue, whatever its concurrency). ``worker_slots`` in the report is the sum
  of ``pool.max-concurrency`` of the nodes consuming the queue (Celery
  ``inspect``), i.e. how many tasks can run at once.
* Counters per queue in Redis, kept by Celery signal handlers in every worker
  (:func:`task_started` / :func:`task_finished`): ``started`` (deliveries that
  began running), ``finished`` and ``busy`` (summed run seconds).
* Samples: each read (API, admin page, ``/metrics`` scrape) stores a sample
  ``{t, depth, consumers, started, finished, busy}`` per queue in a capped Redis
  list, at most one a second. Rates are differences between the newest sample
  and the one nearest ``window`` seconds earlier:

  - ``rate_out`` = Δstarted / Δt (deliveries per second),
  - ``rate_in``  = (Δdepth + Δstarted) / Δt (every message either still waits
    or was delivered; prefetched-not-started messages are the small error),
  - ``service_time`` = Δbusy / Δfinished (seconds per task in one slot),
    falling back to the all-time mean, then to the configured default.

  A fresh deployment needs two reads at least a second apart before rates exist
  (``null`` until then, with the reason in ``notes``).
* ``oldest_age_seconds`` with ``oldest_age_source``:

  - ``management_api``: ``head_message_timestamp`` from the RabbitMQ management
    API when ``RABBITMQ_MANAGEMENT_URL`` is set (docker-compose enables the
    plugin) and the head message carries a timestamp;
  - ``empty``: depth is 0, so 0;
  - ``last_delivery_bound``: an *upper bound*. Queues are FIFO, so the head was
    published after the last message a worker started; its age is at most that
    message's wait (publish stamp ``published_at`` in the task headers, set by
    :func:`stamp_published_at`) plus the time since it started;
  - ``stalled_since``: a *lower bound* when nothing has been delivered: the
    head has waited at least since the oldest consecutive sample that already
    showed a backlog with no delivery since;
  - ``null``: none of the above is known yet.

Scaling advice (:func:`queue_recommendation`) is explained in its docstring and,
with the numbers filled in, in every report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from celery import current_app
from django.conf import settings

from apps.eventbus.amqp_io import BrokerHosts, broker_urls
from apps.eventbus.messages import HEADER_PUBLISHED_AT
from apps.eventbus.queues import Queue, dead_letter_queue_name, subscriber_queue_name
from apps.eventbus.subscribers import registered_subscribers
from apps.ops.deadletters.selectors import dead_letter_counts_by_reason

logger = logging.getLogger(__name__)

SAMPLE_KEEP = 720  # samples kept per queue: 12 min at one a second, hours at scrape intervals
SAMPLE_MIN_INTERVAL = 1.0  # seconds: readers closer together than this share a sample
DEFAULT_WINDOW = 60.0

# Latency target per work queue: the time from publish to the end of the task
# an operator wants (realtime suggestions must feel live; training may wait).
DEFAULT_LATENCY_TARGETS: dict[str, float] = {
    Queue.AI_REALTIME.value: 2.0,
    Queue.AI_BATCH.value: 120.0,
    Queue.AI_TRAINING.value: 3600.0,
    Queue.MAINTENANCE.value: 300.0,
}
# Used until a queue has run a task (no measured service time yet).
DEFAULT_SERVICE_SECONDS: dict[str, float] = {
    Queue.AI_REALTIME.value: 0.05,
    Queue.AI_BATCH.value: 2.0,
    Queue.AI_TRAINING.value: 300.0,
    Queue.MAINTENANCE.value: 1.0,
}
TARGET_UTILISATION = 0.8  # headroom: queues at >80 % busy see waiting times climb steeply (M/M/c)


def latency_target(queue: str) -> float:
    return float({**DEFAULT_LATENCY_TARGETS, **settings.OPS_LATENCY_TARGETS}.get(queue, 60.0))


def default_service_seconds(queue: str) -> float:
    return float({**DEFAULT_SERVICE_SECONDS, **settings.OPS_DEFAULT_SERVICE_SECONDS}.get(queue, 1.0))


def worker_bounds(queue: str) -> tuple[int, int]:
    bounds = settings.OPS_WORKER_BOUNDS.get(queue)
    if bounds:
        return int(bounds[0]), int(bounds[1])
    return settings.OPS_MIN_WORKERS, settings.OPS_MAX_WORKERS


# --- Queue names ----------------------------------------------------------------


def monitored_queues() -> list[tuple[str, str]]:
    """``(name, kind)`` for every queue the fleet watches: work queues, their DLQs, event subscriber queues."""
    names: list[tuple[str, str]] = []
    for queue in Queue:
        names.append((queue.value, "work"))
    for name in _subscriber_queue_names():
        names.append((name, "events"))
    for name, _kind in list(names):
        names.append((dead_letter_queue_name(name), "dead_letter"))
    return names


def _subscriber_queue_names() -> list[str]:
    """Every registered subscriber's queue, then the operator's ``OPS_EXTRA_QUEUES``."""
    names = [subscriber_queue_name(sub.name) for sub in registered_subscribers()]
    return names + [name for name in settings.OPS_EXTRA_QUEUES if name not in names]


# --- Counters kept by the workers -------------------------------------------------


def _redis():  # noqa: ANN202 - redis.Redis
    import redis

    # Short timeouts: a Redis outage must never slow a task or a scrape down.
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5)


_client = None


def _shared_redis():  # noqa: ANN202
    global _client
    if _client is None:
        _client = _redis()
    return _client


def _counter_key(queue: str) -> str:
    return f"{settings.REDIS_KEY_PREFIX}:ops:queue:{queue}"


def _samples_key(queue: str) -> str:
    return f"{settings.REDIS_KEY_PREFIX}:ops:samples:{queue}"


def task_started(*, queue: str, published_at: float | None, now: float | None = None) -> None:
    """A worker began running a message from ``queue`` (Celery ``task_prerun``)."""
    now = time.time() if now is None else now
    fields: dict[str, float] = {"last_start": now}
    if published_at is not None:
        fields["last_wait"] = max(0.0, now - published_at)
    try:
        pipe = _shared_redis().pipeline(transaction=False)
        pipe.hincrby(_counter_key(queue), "started", 1)
        pipe.hset(_counter_key(queue), mapping=fields)
        pipe.execute()
    except Exception:  # counters are best effort; the task must run regardless
        logger.warning("could not record task start for %s", queue, exc_info=True)


def task_finished(*, queue: str, duration: float) -> None:
    """A worker finished a run (any outcome) from ``queue`` after ``duration`` seconds."""
    try:
        pipe = _shared_redis().pipeline(transaction=False)
        pipe.hincrby(_counter_key(queue), "finished", 1)
        pipe.hincrbyfloat(_counter_key(queue), "busy", max(0.0, duration))
        pipe.execute()
    except Exception:  # optional source; fall back to our own figures
        logger.warning("could not record task finish for %s", queue, exc_info=True)


def stamp_published_at(headers: dict[str, Any]) -> None:
    """Give a task message its publish time (``before_task_publish``) so waits can be measured.

    Overwritten on every publish: a Celery retry republishes a new message, whose
    wait starts now (a countdown's delay still counts as waiting).
    """
    headers[HEADER_PUBLISHED_AT] = time.time()


# --- Reading the broker ----------------------------------------------------------


@dataclass
class BrokerQueue:
    name: str
    depth: int | None
    consumers: int | None
    error: str | None = None


def broker_queue_counts(names: list[str], *, broker_url: str | None = None, timeout: float = 2.0) -> list[BrokerQueue]:
    """Depth and consumers of each queue by passive ``queue.declare`` (nothing is created)."""
    from amqp.exceptions import NotFound

    results: list[BrokerQueue] = []
    # A failover BROKER_URL: any node of the cluster answers for every queue.
    with BrokerHosts(broker_url or settings.BROKER_URL).connect(
        timeout=timeout,
        connect_timeout=timeout,
        transport_options={
            "read_timeout": timeout,
            "write_timeout": timeout,
        },
    ) as conn:
        channel = conn.channel()
        try:
            for name in names:
                try:
                    _, depth, consumers = channel.queue_declare(queue=name, passive=True)
                    results.append(BrokerQueue(name=name, depth=int(depth), consumers=int(consumers)))
                except NotFound:
                    # The broker closes the channel on a 404; open a fresh one for the next queue.
                    results.append(BrokerQueue(name=name, depth=None, consumers=None, error="not declared"))
                    channel = conn.channel()
        finally:
            with contextlib.suppress(Exception):
                channel.close()
    return results


def management_queue_info(name: str, *, timeout: float = 2.0) -> dict[str, Any] | None:
    """The management API's view of one queue when ``RABBITMQ_MANAGEMENT_URL`` is set, else ``None``.

    For a cluster ``RABBITMQ_MANAGEMENT_URL`` may list several nodes' APIs
    (``;``-separated, like a failover ``BROKER_URL``): each serves the whole
    cluster, so the first that answers is used. The vhost and credentials come
    from the first URL of ``BROKER_URL`` (every node of one cluster shares them).
    """
    bases = [b.strip() for b in settings.RABBITMQ_MANAGEMENT_URL.split(";") if b.strip()]
    if not bases:
        return None
    import base64
    import urllib.request

    broker = urlsplit(broker_urls(settings.BROKER_URL)[0])
    vhost = broker.path[1:] if broker.path not in ("", "/") else "/"
    credentials = f"{broker.username or 'guest'}:{broker.password or 'guest'}".encode()
    auth = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
    for base in bases:
        url = f"{base.rstrip('/')}/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}"
        request = urllib.request.Request(url, headers=auth)  # noqa: S310 - operator-configured URL
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - operator-configured URL
                return json.loads(response.read())
        except Exception:  # without the management API we still answer depth and consumers
            logger.info("management API unavailable for %s at %s", name, base, exc_info=True)
    return None


# --- Samples, rates, ages ---------------------------------------------------------------


@dataclass
class Sample:
    t: float
    depth: int
    consumers: int
    started: int
    finished: int
    busy: float


@dataclass
class QueueStat:
    name: str
    kind: str
    depth: int | None
    consumers: int | None
    rate_in: float | None = None
    rate_out: float | None = None
    service_time_seconds: float | None = None
    service_time_source: str | None = None
    oldest_age_seconds: float | None = None
    oldest_age_source: str | None = None
    window_seconds: float | None = None
    started_total: int = 0
    finished_total: int = 0
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("rate_in", "rate_out", "service_time_seconds", "oldest_age_seconds", "window_seconds"):
            if data[key] is not None:
                data[key] = round(data[key], 4)
        return data


def _read_counters(client: Any, names: list[str]) -> dict[str, dict[str, float]]:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(_counter_key(name))
    out: dict[str, dict[str, float]] = {}
    for name, raw in zip(names, pipe.execute(), strict=True):
        out[name] = {k.decode(): float(v) for k, v in raw.items()}
    return out


def _read_samples(client: Any, names: list[str]) -> dict[str, list[Sample]]:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.lrange(_samples_key(name), 0, SAMPLE_KEEP - 1)
    out: dict[str, list[Sample]] = {}
    for name, raw in zip(names, pipe.execute(), strict=True):
        out[name] = [Sample(**json.loads(item)) for item in raw]  # newest first
    return out


def _store_samples(client: Any, samples: dict[str, Sample], previous: dict[str, list[Sample]]) -> None:
    pipe = client.pipeline(transaction=False)
    for name, sample in samples.items():
        history = previous.get(name) or []
        if history and sample.t - history[0].t < SAMPLE_MIN_INTERVAL:
            continue
        pipe.lpush(_samples_key(name), json.dumps(asdict(sample)))
        pipe.ltrim(_samples_key(name), 0, SAMPLE_KEEP - 1)
    pipe.execute()


def _baseline(history: list[Sample], now: float, window: float) -> Sample | None:
    """The stored sample nearest ``window`` seconds ago (and at least a second old)."""
    best: Sample | None = None
    for sample in history:  # newest first
        age = now - sample.t
        if age < SAMPLE_MIN_INTERVAL:
            continue
        best = sample
        if age >= window:
            break
    return best


def queue_stat_compute(
    *,
    name: str,
    kind: str,
    current: Sample,
    history: list[Sample],
    counters: dict[str, float],
    window: float,
    archived_delta: int | None = None,
) -> QueueStat:
    """Rates, service time and oldest age of one queue from its current sample and history (pure)."""
    stat = QueueStat(
        name=name,
        kind=kind,
        depth=current.depth,
        consumers=current.consumers,
        started_total=current.started,
        finished_total=current.finished,
    )
    base = _baseline(history, current.t, window)
    if base is None:
        stat.notes.append("rates need two reads at least 1 s apart; read again")
    else:
        dt = current.t - base.t
        stat.window_seconds = dt
        delivered = max(0, current.started - base.started)
        if kind == "dead_letter":
            # The archiver (not a Celery worker) drains DLQs; its output is the rows it stored.
            if archived_delta is not None:
                delivered = max(0, archived_delta)
            else:
                stat.notes.append("DLQ drain rate unknown (no archived count); rate_in is the net change")
        elif kind == "events":
            stat.notes.append(
                "drained by the subscriber runner, which keeps no delivery counter: "
                "rate_out is unknown and rate_in is the net change"
            )
        stat.rate_out = delivered / dt if kind != "events" else None
        stat.rate_in = max(0.0, (current.depth - base.depth) + delivered) / dt
        done = current.finished - base.finished
        if done > 0:
            stat.service_time_seconds = max(0.0, current.busy - base.busy) / done
            stat.service_time_source = "window"
    if stat.service_time_seconds is None and current.finished > 0:
        stat.service_time_seconds = current.busy / current.finished
        stat.service_time_source = "all_time"
    _oldest_age(stat, current=current, history=history, counters=counters)
    return stat


def _oldest_age(stat: QueueStat, *, current: Sample, history: list[Sample], counters: dict[str, float]) -> None:
    if current.depth == 0:
        stat.oldest_age_seconds, stat.oldest_age_source = 0.0, "empty"
        return
    last_start, last_wait = counters.get("last_start"), counters.get("last_wait")
    if last_start is not None and last_wait is not None:
        stat.oldest_age_seconds = last_wait + max(0.0, current.t - last_start)
        stat.oldest_age_source = "last_delivery_bound"
        return
    since: float | None = None
    for sample in history:  # newest first: walk back while the same head has been waiting
        if sample.depth == 0 or sample.started != current.started:
            break
        since = sample.t
    if since is not None:
        stat.oldest_age_seconds = current.t - since
        stat.oldest_age_source = "stalled_since"


def queue_stats_collect(*, window: float = DEFAULT_WINDOW, now: float | None = None) -> list[QueueStat]:
    """Read the broker, record a sample, and compute every monitored queue's figures."""
    queues = monitored_queues()
    names = [name for name, _ in queues]
    counts = {q.name: q for q in broker_queue_counts(names)}
    now = time.time() if now is None else now
    archived = _archived_per_queue()
    client = _shared_redis()
    try:
        counters = _read_counters(client, names)
        history = _read_samples(client, names)
    except Exception:
        logger.warning("fleet counters unavailable", exc_info=True)
        counters, history = {n: {} for n in names}, {n: [] for n in names}
    stats: list[QueueStat] = []
    current_samples: dict[str, Sample] = {}
    for name, kind in queues:
        broker = counts[name]
        if broker.depth is None:
            stats.append(QueueStat(name=name, kind=kind, depth=None, consumers=None, error=broker.error))
            continue
        c = counters.get(name, {})
        started = int(c.get("started", 0))
        if kind == "dead_letter" and archived is not None:
            started = archived.get(name, 0)
        sample = Sample(
            t=now,
            depth=broker.depth,
            consumers=broker.consumers or 0,
            started=started,
            finished=int(c.get("finished", 0)),
            busy=float(c.get("busy", 0.0)),
        )
        current_samples[name] = sample
        hist = history.get(name, [])
        archived_delta = None
        if kind == "dead_letter" and archived is not None:
            base = _baseline(hist, now, window)
            archived_delta = (sample.started - base.started) if base is not None else None
        stat = queue_stat_compute(
            name=name, kind=kind, current=sample, history=hist, counters=c, window=window, archived_delta=archived_delta
        )
        _apply_management(stat, now=now)
        stats.append(stat)
    try:
        _store_samples(client, current_samples, history)
    except Exception:
        logger.warning("could not store fleet samples", exc_info=True)
    return stats


def _apply_management(stat: QueueStat, *, now: float) -> None:
    info = management_queue_info(stat.name) if stat.depth else None
    if not info:
        return
    head = info.get("head_message_timestamp")
    if head:
        stat.oldest_age_seconds, stat.oldest_age_source = max(0.0, now - float(head)), "management_api"
    details = info.get("message_stats") or {}
    if stat.rate_in is None and "publish_details" in details:
        stat.rate_in = float(details["publish_details"].get("rate", 0.0))
        stat.notes.append("rate_in from the management API")
    if stat.rate_out is None and "deliver_get_details" in details:
        stat.rate_out = float(details["deliver_get_details"].get("rate", 0.0))
        stat.notes.append("rate_out from the management API")


def _archived_per_queue() -> dict[str, int] | None:
    """Dead letters stored per DLQ name (the archiver's output, which drains the DLQ)."""
    try:
        counts = dead_letter_counts_by_reason()
    except Exception:
        logger.warning("dead letter counts unavailable", exc_info=True)
        return None
    out: dict[str, int] = {}
    for (queue, _reason), n in counts.items():
        dlq = queue if queue.endswith(".dlq") else dead_letter_queue_name(queue)
        out[dlq] = out.get(dlq, 0) + n
    return out


# --- Workers --------------------------------------------------------------------------


@dataclass
class WorkerNode:
    name: str
    queues: list[str]
    concurrency: int


def worker_nodes(*, timeout: float = 1.0) -> list[WorkerNode] | None:
    """Live Celery nodes, the queues each consumes and its pool size (``inspect``); ``None`` if the broker is down."""
    try:
        inspector = current_app.control.inspect(timeout=timeout)
        stats = inspector.stats() or {}
        active = inspector.active_queues() or {}
    except Exception:
        logger.warning("celery inspect failed", exc_info=True)
        return None
    nodes = []
    for node in sorted(set(stats) | set(active)):
        pool = (stats.get(node) or {}).get("pool") or {}
        concurrency = pool.get("max-concurrency") or 1
        queues = [q.get("name") for q in active.get(node) or [] if q.get("name")]
        nodes.append(WorkerNode(name=node, queues=queues, concurrency=int(concurrency)))
    return nodes


def workers_ping(*, timeout: float = 1.0) -> list[str]:
    """Names of Celery nodes answering ``current_app.control.ping`` within ``timeout``."""
    replies = current_app.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


# --- Recommendation ---------------------------------------------------------------------


def erlang_c_wait(*, servers: int, arrival_rate: float, service_time: float) -> float:
    """Mean time in queue (M/M/c, Erlang C); ``inf`` when the servers cannot keep up."""
    load = arrival_rate * service_time  # offered load in Erlangs
    if arrival_rate <= 0:
        return 0.0
    if servers <= load:
        return math.inf
    term, total = 1.0, 1.0
    for k in range(1, servers):
        term *= load / k
        total += term
    top = term * load / servers / (1 - load / servers)
    p_wait = top / (total + top)
    return p_wait * service_time / (servers - load)


@dataclass
class Recommendation:
    queue: str
    current_workers: int
    recommended_workers: int
    action: str
    arrival_rate: float
    service_time_seconds: float
    service_time_source: str
    latency_target_seconds: float
    depth: int
    offered_load: float
    utilisation: float | None
    expected_wait_seconds: float | None
    pressure: float
    explanation: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("arrival_rate", "service_time_seconds", "offered_load", "utilisation", "pressure"):
            if isinstance(data[key], float) and math.isfinite(data[key]):
                data[key] = round(data[key], 4)
        if data["expected_wait_seconds"] is not None:
            data["expected_wait_seconds"] = (
                round(data["expected_wait_seconds"], 4) if math.isfinite(data["expected_wait_seconds"]) else None
            )
        if not math.isfinite(data["pressure"]):
            data["pressure"] = None
        if data["utilisation"] is not None and not math.isfinite(data["utilisation"]):
            data["utilisation"] = None
        return data


def queue_recommendation(
    *,
    queue: str,
    arrival_rate: float,
    service_time: float,
    service_time_source: str,
    latency_target: float,
    depth: int,
    current_workers: int,
    oldest_age: float | None = None,
    min_workers: int = 1,
    max_workers: int = 64,
) -> Recommendation:
    """Worker slots a queue needs, from arrival rate λ, service time S and latency target T.

    * offered load a = λ·S: slots busy on average.
    * stability with headroom: c ≥ a / 0.8, so utilisation ρ = a/c stays ≤ 80 %.
    * latency: the smallest c whose M/M/c (Erlang C) mean wait W plus S fits T.
    * backlog: the current ``depth`` must drain within T while new work keeps
      arriving: (c − a)·T ≥ depth·S, so c ≥ a + depth·S/T.
    * the answer is the largest of these, kept within [min_workers, max_workers];
      more than now: ``scale_up``, fewer: ``scale_down``, else ``hold``.
    """
    lam, s, t = max(0.0, arrival_rate), max(1e-9, service_time), max(1e-9, latency_target)
    load = lam * s
    by_utilisation = math.ceil(load / TARGET_UTILISATION - 1e-9) if load > 0 else 0
    by_backlog = math.ceil(load + depth * s / t - 1e-9) if depth > 0 else 0
    by_latency = 0
    latency_note = ""
    if lam > 0:
        if s >= t:
            latency_note = (
                f" S={s:.3g}s alone exceeds T={t:.3g}s: no worker count meets the target,"
                " so latency is not a constraint here."
            )
        else:
            c = max(1, math.floor(load) + 1)
            while c <= max_workers and erlang_c_wait(servers=c, arrival_rate=lam, service_time=s) + s > t:
                c += 1
            by_latency = c
    needed = max(by_utilisation, by_backlog, by_latency)
    recommended = min(max_workers, max(min_workers, needed))
    action = "scale_up" if recommended > current_workers else "scale_down" if recommended < current_workers else "hold"
    utilisation = load / current_workers if current_workers else (math.inf if load > 0 else None)
    wait = (
        erlang_c_wait(servers=current_workers, arrival_rate=lam, service_time=s)
        if current_workers
        else (math.inf if (lam > 0 or depth > 0) else None)
    )
    if current_workers == 0 and (lam > 0 or depth > 0):
        pressure = math.inf
    else:
        pressure = max(utilisation or 0.0, (oldest_age or 0.0) / t)
    explanation = (
        f"{queue}: arrival λ={lam:.4g}/s, service time S={s:.4g}s ({service_time_source}), target T={t:.4g}s, "
        f"backlog {depth}. Offered load a=λ·S={load:.4g} busy slots. "
        f"Utilisation ≤{TARGET_UTILISATION:.0%} needs ceil(a/{TARGET_UTILISATION})={by_utilisation}; "
        f"draining the backlog within T needs ceil(a + depth·S/T)={by_backlog}; "
        f"M/M/c wait + S ≤ T needs {by_latency}.{latency_note} "
        f"Max of these within [{min_workers}, {max_workers}] = {recommended} vs {current_workers} now: {action}."
    )
    if current_workers:
        explanation += f" Now ρ=a/c={load / current_workers:.2f}."
    return Recommendation(
        queue=queue,
        current_workers=current_workers,
        recommended_workers=recommended,
        action=action,
        arrival_rate=lam,
        service_time_seconds=s,
        service_time_source=service_time_source,
        latency_target_seconds=t,
        depth=depth,
        offered_load=load,
        utilisation=utilisation,
        expected_wait_seconds=wait,
        pressure=pressure,
        explanation=explanation,
    )


def fleet_report(*, stats: list[QueueStat], nodes: list[WorkerNode] | None) -> dict[str, Any]:
    """Recommendations for every work queue and the bottleneck (pure: figures in, report out)."""
    recommendations: list[Recommendation] = []
    for stat in stats:
        if stat.kind != "work" or stat.depth is None:
            continue
        if nodes is not None:
            current = sum(n.concurrency for n in nodes if stat.name in n.queues)
            workers_source = "celery inspect (pool size of nodes consuming the queue)"
        else:
            current = stat.consumers or 0
            workers_source = "AMQP consumers (workers did not answer inspect)"
        if stat.service_time_seconds is not None:
            service, source = stat.service_time_seconds, f"measured, {stat.service_time_source}"
        else:
            service, source = default_service_seconds(stat.name), "configured default: nothing measured yet"
        low, high = worker_bounds(stat.name)
        rec = queue_recommendation(
            queue=stat.name,
            arrival_rate=stat.rate_in or 0.0,
            service_time=service,
            service_time_source=source,
            latency_target=latency_target(stat.name),
            depth=stat.depth,
            current_workers=current,
            oldest_age=stat.oldest_age_seconds,
            min_workers=low,
            max_workers=high,
        )
        rec.explanation += f" Workers counted from {workers_source}."
        shared = sorted({q for n in nodes or [] if stat.name in n.queues for q in n.queues} - {stat.name})
        if shared:
            rec.explanation += (
                f" Those slots also serve {', '.join(shared)}: size the pool for the sum of the"
                " queues' recommendations."
            )
        if stat.rate_in is None:
            rec.explanation += " No arrival rate yet (first read): λ taken as 0."
        recommendations.append(rec)
    pressured = [r for r in recommendations if r.action == "scale_up" or r.pressure >= TARGET_UTILISATION]
    bottleneck = max(pressured, key=lambda r: (r.pressure, r.recommended_workers - r.current_workers), default=None)
    dead_letters = [
        {"queue": s.name, "depth": s.depth, "rate_in": s.rate_in} for s in stats if s.kind == "dead_letter" and s.depth
    ]
    if bottleneck is not None:
        pressure = "no workers" if not math.isfinite(bottleneck.pressure) else f"pressure {bottleneck.pressure:.2f}"
        summary = (
            f"Bottleneck: {bottleneck.queue} ({pressure}; {bottleneck.current_workers} worker slot(s), "
            f"{bottleneck.recommended_workers} recommended)."
        )
    else:
        summary = "No bottleneck: every queue keeps up within its latency target."
    if dead_letters:
        summary += " Dead letters waiting: " + ", ".join(f"{d['queue']}={d['depth']}" for d in dead_letters) + "."
    return {
        "bottleneck": bottleneck.queue if bottleneck else None,
        "summary": summary,
        "recommendations": [r.as_dict() for r in recommendations],
        "dead_letter_queues": dead_letters,
        "method": queue_recommendation.__doc__.strip() if queue_recommendation.__doc__ else "",
        "workers": [asdict(n) for n in nodes] if nodes is not None else None,
    }


# --- What the API and the admin page show -----------------------------------------------


def queue_samples(names: list[str]) -> dict[str, list[Sample]]:
    """The samples kept for each queue (newest first; see SAMPLE_KEEP), or none when Redis is away."""
    try:
        return _read_samples(_shared_redis(), names)
    except Exception:  # the charts are optional; the figures themselves do not need them
        logger.warning("fleet samples unavailable", exc_info=True)
        return {}


class FleetUnavailable(Exception):
    """The broker did not answer: no queue figures can be given."""


def fleet_queues(*, window: float = DEFAULT_WINDOW) -> list[QueueStat]:
    try:
        return queue_stats_collect(window=window)
    except Exception as exc:  # any broker/network error means the same to the caller
        raise FleetUnavailable(f"{exc.__class__.__name__}: {exc}") from exc


def fleet_snapshot(*, window: float = DEFAULT_WINDOW, include_report: bool = True) -> dict[str, Any]:
    stats = fleet_queues(window=window)
    data: dict[str, Any] = {
        "generated_at": time.time(),
        "window_seconds": window,
        "queues": [s.as_dict() for s in stats],
    }
    if include_report:
        data["report"] = fleet_report(stats=stats, nodes=worker_nodes())
    return data
