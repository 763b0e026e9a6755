"""Fair sharing of one queue by four workers with uneven task durations.

Run:  .venv/bin/python bench/fairness.py [--tasks 1200]

Four real ``celery -A project worker -Q ai.batch --concurrency 1`` processes
(the batch worker's settings: prefork, acks late, prefetch multiplier 1 on
``ai.batch``) share one quorum queue. Every tenth task sleeps 200 ms, the
others 20 ms. Each task records, per worker, one completion and its busy time
in Redis. Reported per worker: completed tasks, busy seconds; their
coefficient of variation (std/mean; goal: the share of completed tasks within
5%), and the makespan (first publish to last completion).

Baseline, same run: the same four workers with prefetch multiplier 8 (about
what Celery's default of 4 gives a 2-process worker), where a worker holds
messages it cannot start while others idle. A dedicated vhost
(``bench_fairness``) is created and deleted. Results: bench/results/fairness.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # bench/ first on sys.path would let bench/queue.py shadow the stdlib's queue
    sys.path[:] = [str(Path(__file__).resolve().parents[1]), *sys.path[1:]]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.dev")

from celery import signals

from apps.eventbus.queues import Queue
from bench._lib import support
from workers.base import task

# No database: the workers and the tasks only talk to RabbitMQ and Redis.
BENCH = support.Resources("bench_fairness")
PREFIX = f"{BENCH.name}:"
WORKERS = 4

_client: Any = None


def _redis() -> Any:
    global _client
    if _client is None:
        import redis
        from django.conf import settings

        _client = redis.Redis.from_url(settings.REDIS_URL)
    return _client


@signals.worker_ready.connect
def _ready(**kwargs: Any) -> None:
    _redis().sadd(f"{PREFIX}ready", os.environ.get("BENCH_WORKER", "?"))


@task(name="bench.sleep", queue=Queue.AI_BATCH)
def sleep(*, seconds: float, **kwargs: Any) -> None:
    started = time.monotonic()
    time.sleep(seconds)
    name = os.environ.get("BENCH_WORKER", "?")
    pipe = _redis().pipeline()
    pipe.hincrby(f"{PREFIX}count", name, 1)
    pipe.hincrbyfloat(f"{PREFIX}busy", name, time.monotonic() - started)
    pipe.incr(f"{PREFIX}done")
    pipe.execute()


def cv(values: list[float]) -> float:
    mean = statistics.mean(values)
    return statistics.pstdev(values) / mean if mean else 0.0


def run_round(label: str, n: int, env: dict[str, str], prefetch: int | None) -> dict[str, Any]:
    client = _redis()
    for key in ("count", "busy", "done", "ready"):
        client.delete(f"{PREFIX}{key}")
    with support.Processes() as procs:
        for i in range(WORKERS):
            worker_env = {**env, "BENCH_WORKER": f"w{i}"}
            if prefetch is not None:
                worker_env["CELERY_PREFETCH_MULTIPLIER"] = str(prefetch)
            worker = support.celery_worker("ai.batch", name=f"w{i}-{label}@%h", concurrency=1, include="bench.fairness")
            procs.start(f"w{i}", worker, env=worker_env)
        support.wait_until(lambda: client.scard(f"{PREFIX}ready") >= WORKERS, timeout=180, interval=0.2, what="ready")
        time.sleep(1.0)  # consumers registered after worker_ready
        listed = support.rabbitmqctl(
            "list_consumers", "-q", "-p", BENCH.name, "queue_name", "prefetch_count", check=False
        ).split()
        consumer_prefetch = sorted({int(v) for v in listed[1::2] if v.isdigit()})
        from project.celery import app

        started = time.monotonic()
        with app.producer_or_acquire() as producer:
            for i in range(n):
                app.send_task("bench.sleep", kwargs={"seconds": 0.2 if i % 10 == 0 else 0.02}, producer=producer)
        support.wait_until(lambda: int(client.get(f"{PREFIX}done") or 0) >= n, timeout=600, interval=0.01, what="done")
        makespan = time.monotonic() - started
    counts = {k.decode(): int(v) for k, v in client.hgetall(f"{PREFIX}count").items()}
    busy = {k.decode(): float(v) for k, v in client.hgetall(f"{PREFIX}busy").items()}
    names = [f"w{i}" for i in range(WORKERS)]
    result = {
        "label": label,
        "prefetch": prefetch or 1,
        "makespan": makespan,
        "broker_prefetch": consumer_prefetch,
        "counts": [counts.get(w, 0) for w in names],
        "busy": [busy.get(w, 0.0) for w in names],
    }
    result["cv_count"] = cv(result["counts"])
    result["cv_busy"] = cv(result["busy"])
    print(
        f"{label:9s} prefetch x{result['prefetch']} (broker sees {consumer_prefetch}): "
        f"counts {result['counts']} cv {result['cv_count']:.3f}; "
        f"busy {[round(b, 2) for b in result['busy']]} cv {result['cv_busy']:.3f}; makespan {makespan:.2f}s",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1200)
    args = parser.parse_args()
    env = BENCH.env(DATABASE_URL=None, PYTHONUNBUFFERED="1")
    support.django_setup(env)
    BENCH.setup(database=False)
    try:
        from kombu import Connection

        from apps.eventbus.queues import declare_topology

        with Connection(env["BROKER_URL"]) as conn:
            declare_topology(conn.default_channel)
        ours = run_round("ours", args.tasks, env, None)
        baseline = run_round("baseline", args.tasks, env, 8)
    finally:
        BENCH.teardown(database=False)

    ideal = sum(0.2 if i % 10 == 0 else 0.02 for i in range(args.tasks)) / WORKERS
    lines = [
        "# bench/fairness.py: four workers, one queue, uneven task durations",
        "",
        f"Command: `.venv/bin/python bench/fairness.py --tasks {args.tasks}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other processes), "
        f"Python {platform.python_version()}, RabbitMQ 3.10.8, quorum queue `ai.batch`, vhost `{BENCH.name}`.",
        f"Tasks: {args.tasks}, every tenth sleeps 200 ms, the others 20 ms; 4 workers x 1 prefork process, acks late. "
        f"Ideal makespan (perfect split of {ideal * WORKERS:.1f} s of work): {ideal:.2f} s.",
        "",
        "| setting | consumer prefetch (rabbitmqctl) | completed per worker | CV of completed | busy s per worker "
        "| CV of busy | makespan s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (ours, baseline):
        name = "ours: prefetch x1 (ai.batch)" if r is ours else "baseline: prefetch x8"
        lines.append(
            f"| {name} | {r['broker_prefetch']} | {r['counts']} | {r['cv_count'] * 100:.1f}% | "
            f"{[round(b, 2) for b in r['busy']]} | {r['cv_busy'] * 100:.1f}% | {r['makespan']:.2f} |"
        )
    goal = "met" if ours["cv_count"] <= 0.05 else "missed"
    lines += [
        "",
        f"**Goal: CV of the per-worker share of completed tasks <= 5%: {ours['cv_count'] * 100:.1f}% ({goal}).**",
        "",
        "With prefetch 1 a worker takes the next message only when it is free, so long tasks go to whoever "
        "is available. With a deep prefetch RabbitMQ hands messages out at delivery, and a worker holding "
        "several long tasks keeps messages that others could run."
        + (
            " In this run the deep prefetch was about as even: all four workers had subscribed before the "
            "first publish, so round-robin delivery spread the messages evenly too; it diverges when workers "
            "join at different times (the first one takes a full prefetch) or tasks run long."
            if baseline["cv_count"] <= ours["cv_count"] + 0.01
            else ""
        ),
        "",
        f"Throughput: the makespan with prefetch 1 is {ours['makespan']:.1f} s vs {baseline['makespan']:.1f} s "
        "with prefetch 8. Prefetch 1 pays one broker round trip (ack, then the next delivery) between tasks; "
        "with 20 ms tasks on this shared 2-core machine that round trip is a large part of each task, so deep "
        "prefetch finishes sooner here. The batch, training and maintenance queues run tasks of seconds to "
        "minutes, where the round trip is negligible and holding unacked messages also counts against "
        "RabbitMQ's consumer timeout; the realtime queue (short tasks) uses prefetch 4 for that reason "
        "(apps/eventbus/queues.py).",
    ]
    print(f"goal CV <= 5%: {ours['cv_count'] * 100:.1f}% ({goal})")
    support.write_results("fairness", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
