"""Task throughput of the Celery fleet vs raw kombu on the same quorum queue, and the dead-letter round trip.

Run:  .venv/bin/python bench/queue.py [--tasks 3000] [--dead-letters 30]

What it measures, in one run, on a vhost and database of its own
(``bench_queue``, created and dropped here):

1. raw kombu: a publisher (publisher confirms, persistent) sends N messages
   to ``ai.realtime``; then one consumer process (prefetch 32, manual acks)
   drains them, one Redis INCR per message so completions can be counted.
2. Celery: ``send_task`` (confirms) sends N ``bench.noop`` tasks (the same
   Redis INCR); then a real ``celery -A project worker -Q ai.realtime --pool
   threads --concurrency 8`` (the Procfile's realtime worker: acks late,
   per-queue prefetch 4 x 8, the task base class with its logging, metrics and
   classification) drains them. Consume rates run from the first completion
   to the last, so process start-up is excluded.
3. dead-letter round trip: ``bench.fail`` raises a permanent error; the time from
   publish to the committed ``DeadLetter`` row (worker reject -> ``dlx`` ->
   ``ai.realtime.dlq`` -> the archiver command), one at a time, beside the
   time from publish to completion of ``bench.noop`` measured the same way.

Goal: Celery publish+consume rate >= 0.25x the raw kombu one. Results go to
bench/results/queue.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # bench/ first on sys.path would let this file shadow the stdlib's queue
    sys.path[:] = [str(Path(__file__).resolve().parents[1]), *sys.path[1:]]

from bench._lib import support

BENCH = support.Resources("bench_queue")
PREFIX = f"{BENCH.name}:"

_clients: dict[int, Any] = {}


def _redis() -> Any:
    """One client per process (both paths pay the same single INCR round trip per task)."""
    client = _clients.get(os.getpid())
    if client is None:
        import redis
        from django.conf import settings

        client = _clients[os.getpid()] = redis.Redis.from_url(settings.REDIS_URL)
    return client


def _define_tasks() -> None:
    from apps.eventbus.queues import Queue
    from workers.base import PermanentError, task

    @task(name="bench.noop", queue=Queue.AI_REALTIME)
    def noop(*, n: int = 0, **kwargs: Any) -> None:
        _redis().incr(f"{PREFIX}done")

    @task(name="bench.fail", queue=Queue.AI_REALTIME)
    def fail(*, n: int = 0, **kwargs: Any) -> None:
        raise PermanentError(f"bench failure {n}")


if __name__ in ("__main__", "bench.queue"):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.dev")
    _define_tasks()


def done_count() -> int:
    return int(_redis().get(f"{PREFIX}done") or 0)


def wait_count(target: int, *, timeout: float) -> float:
    support.wait_until(lambda: done_count() >= target, timeout=timeout, interval=0.005, what=f"{target} done")
    return time.monotonic()


# --- raw kombu -------------------------------------------------------------


def raw_consumer_main() -> None:
    """Child process: consume ai.realtime with manual acks, INCR per message, until killed."""
    import django
    from kombu import Connection

    from apps.eventbus.queues import Queue, declare_topology, work_queue

    django.setup()
    client = _redis()
    with Connection(os.environ["BROKER_URL"]) as conn:
        channel = conn.channel()
        declare_topology(channel)

        def on_message(message: Any) -> None:
            client.incr(f"{PREFIX}done")
            message.ack()

        with conn.Consumer([work_queue(Queue.AI_REALTIME)], channel=channel, on_message=on_message, prefetch_count=32):
            client.set(f"{PREFIX}raw_ready", 1)
            while True:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=1)


def raw_publish(n: int) -> None:
    from kombu import Connection, Producer

    from apps.eventbus.messages import build_task_message

    msg = build_task_message("bench.noop", {"n": 0}, correlation_id="bench")
    with Connection(os.environ["BROKER_URL"], transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel())
        for _ in range(n):
            producer.publish(
                msg.body, exchange=msg.exchange, routing_key=msg.routing_key, headers=msg.headers, **msg.properties
            )


def celery_publish(n: int) -> None:
    from project.celery import app

    with app.producer_or_acquire() as producer:
        for i in range(n):
            app.send_task("bench.noop", kwargs={"n": i}, producer=producer)


def measure_publish(label: str, n: int, publish: Any) -> float:
    started = time.monotonic()
    publish(n)
    rate = n / (time.monotonic() - started)
    print(f"{label:8s} published {n} with confirms: {rate:.0f}/s", flush=True)
    return rate


def measure_consume(label: str, n: int, start_consumer: Any) -> float:
    """Start the consumer on a full queue; rate from the first completion to the last (startup excluded)."""
    _redis().set(f"{PREFIX}done", 0)
    proc = start_consumer()

    def first_done() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{label} consumer exited")
        return done_count() >= 1

    support.wait_until(first_done, timeout=180, interval=0.002, what=f"{label} consumer's first completion")
    first = time.monotonic()
    first_count = done_count()
    finished = wait_count(n, timeout=600)
    rate = (n - first_count) / max(finished - first, 1e-9)
    print(f"{label:8s} consumed {n}: {rate:.0f}/s", flush=True)
    return rate


# --- dead-letter round trip ------------------------------------------------


def round_trips(m: int) -> dict[str, list[float]]:
    from django.db import connections

    from apps.ops.models import DeadLetter
    from project.celery import app

    ok: list[float] = []
    dead: list[float] = []
    client = _redis()
    for i in range(m):
        client.set(f"{PREFIX}done", 0)
        t0 = time.monotonic()
        app.send_task("bench.noop", kwargs={"n": i})
        ok.append(wait_count(1, timeout=60) - t0)

        t0 = time.monotonic()
        task_id = app.send_task("bench.fail", kwargs={"n": i}).id
        archived = DeadLetter.objects.filter(task_id=task_id).exists
        support.wait_until(archived, timeout=60, interval=0.002, what="dead letter archived")
        dead.append(time.monotonic() - t0)
    connections.close_all()
    return {"ok": ok, "dead": dead}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--dead-letters", type=int, default=30)
    parser.add_argument("--raw-consumer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_consumer:
        raw_consumer_main()
        return

    env = BENCH.env(PYTHONUNBUFFERED="1")
    support.django_setup(env)
    BENCH.clear_redis()
    BENCH.setup(migrate=True)
    from kombu import Connection

    from apps.eventbus.queues import declare_topology

    with Connection(env["BROKER_URL"]) as conn:
        declare_topology(conn.default_channel)
    procs = support.Processes()
    try:
        # 1. raw kombu: publish N with confirms, then one consumer process drains them
        raw_pub = measure_publish("raw", args.tasks, raw_publish)
        raw_con = measure_consume(
            "raw", args.tasks, lambda: procs.start("raw", [support.PY, __file__, "--raw-consumer"], env=env)
        )
        procs.stop("raw")

        # 2. Celery: send_task N, then the Procfile's realtime worker drains them
        cel_pub = measure_publish("celery", args.tasks, celery_publish)
        worker = support.celery_worker(
            "ai.realtime", name="bench@%h", pool="threads", concurrency=8, include="bench.queue"
        )
        cel_con = measure_consume("celery", args.tasks, lambda: procs.start("worker", worker, env=env))
        procs.start("archiver", support.manage("run_deadletter_archiver"), env=env)
        time.sleep(3)  # the archiver's Django start-up

        # 3. dead-letter round trip
        trips = round_trips(args.dead_letters)
    finally:
        procs.stop_all(timeout=15)
        BENCH.teardown()

    raw_total = 1 / (1 / raw_pub + 1 / raw_con)
    cel_total = 1 / (1 / cel_pub + 1 / cel_con)
    ratio = cel_total / raw_total
    ok_med, dead_med = statistics.median(trips["ok"]) * 1000, statistics.median(trips["dead"]) * 1000
    ok_p95, dead_p95 = support.percentile(trips["ok"], 0.95) * 1000, support.percentile(trips["dead"], 0.95) * 1000
    print(
        f"ratio celery/raw = {ratio:.2f}x publish+consume (goal >= 0.25x); consume {cel_con / raw_con:.2f}x, "
        f"publish {cel_pub / raw_pub:.2f}x"
    )
    print(
        f"round trip ok: median {ok_med:.1f} ms p95 {ok_p95:.1f} ms; "
        f"dead letter (publish -> row): median {dead_med:.1f} ms p95 {dead_p95:.1f} ms"
    )

    lines = [
        "# bench/queue.py: Celery fleet vs raw kombu, dead-letter round trip",
        "",
        f"Command: `.venv/bin/python bench/queue.py --tasks {args.tasks} --dead-letters {args.dead_letters}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other processes), "
        f"Python {platform.python_version()}, RabbitMQ 3.10.8 (quorum queue `ai.realtime`, vhost `{BENCH.name}`).",
        "",
        "## Throughput (publish N with publisher confirms, then drain the full queue)",
        "",
        "| path | publish/s | consume/s | publish+consume/s |",
        "|---|---|---|---|",
        f"| raw kombu (persistent, confirms; 1 consumer process, prefetch 32, manual ack) | {raw_pub:.0f} | "
        f"{raw_con:.0f} | {raw_total:.0f} |",
        f"| Celery, production settings (`send_task` with confirms; realtime worker: threads x8, "
        f"prefetch 4x8, acks late, task base class) | {cel_pub:.0f} | {cel_con:.0f} | {cel_total:.0f} |",
        "",
        f"**Ratio Celery / raw kombu (publish+consume): {ratio:.2f}x** "
        f"(goal >= 0.25x: {'met' if ratio >= 0.25 else 'missed'}); consume only: {cel_con / raw_con:.2f}x, "
        f"publish only: {cel_pub / raw_pub:.2f}x. {args.tasks} tasks each. Consume rates are timed from the "
        "first completion to the last, so process start-up is excluded.",
        "",
        "## Dead-letter round trip (one at a time)",
        "",
        "| path | n | median ms | p95 ms |",
        "|---|---|---|---|",
        f"| `bench.noop`: publish -> completed | {len(trips['ok'])} | {ok_med:.1f} | {ok_p95:.1f} |",
        f"| `bench.fail`: publish -> reject -> dlx -> `ai.realtime.dlq` -> archiver -> `DeadLetter` row committed "
        f"| {len(trips['dead'])} | {dead_med:.1f} | {dead_p95:.1f} |",
        "",
        "Both paths do one Redis INCR per task to count completions. The dead-letter path adds the "
        "TaskFailure write (exception and traceback) before the reject, the broker's at-least-once "
        "dead-lettering, and the archiver's row insert and ack after commit.",
        "Numbers on a 2-core machine shared with other builds: the publisher, the broker, the consumer "
        "and PostgreSQL compete for the same cores.",
    ]
    support.write_results("queue", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
