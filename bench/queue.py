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

import sys

if __name__ == "queue":
    # A script run from bench/ has this folder first on sys.path, so its
    # ``import queue`` (kombu, logging, concurrent.futures...) finds this file
    # instead of the standard library's. Hand over the real module; the rest
    # of this file then only defines functions.
    import importlib.util as _util
    import os.path as _path
    import sysconfig as _sysconfig

    _spec = _util.spec_from_file_location("queue", _path.join(_sysconfig.get_paths()["stdlib"], "queue.py"))
    _real = _util.module_from_spec(_spec)
    sys.modules["queue"] = _real
    _spec.loader.exec_module(_real)
elif __name__ == "__main__":
    # Run as a script: drop this folder from the path for the same reason.
    sys.path[:] = [p for p in sys.path if p not in ("", __file__.rsplit("/", 1)[0]) and not p.endswith("/bench")]

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NAME = "bench_queue"
PREFIX = f"{NAME}:"

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
    sys.path.insert(0, str(REPO))
    _define_tasks()


# --- helpers ---------------------------------------------------------------


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings.dev",
        DEBUG="false",
        LOG_LEVEL="WARNING",
        BROKER_URL=f"amqp://guest:guest@127.0.0.1:5672/{NAME}",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{NAME}",
        REDIS_KEY_PREFIX=NAME,
        CONTEXT_ENGINE_SKIP_DOTENV="1",
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
    )
    return env


def setup_resources(env: dict[str, str]) -> None:
    subprocess.run(["rabbitmqctl", "delete_vhost", NAME], capture_output=True)
    run(["rabbitmqctl", "add_vhost", NAME])
    run(["rabbitmqctl", "set_permissions", "-p", NAME, "guest", ".*", ".*", ".*"])
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", NAME], capture_output=True)
    run(["createdb", "-h", "127.0.0.1", "-U", "postgres", NAME])
    run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=REPO, env=env)


def teardown_resources() -> None:
    subprocess.run(["rabbitmqctl", "delete_vhost", NAME], capture_output=True)
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", NAME], capture_output=True)
    try:
        client = _redis()
        keys = list(client.scan_iter(f"{PREFIX}*"))
        if keys:
            client.delete(*keys)
    except Exception:  # noqa: BLE001 - best-effort cleanup
        pass


def wait_count(target: int, *, timeout: float) -> float:
    client = _redis()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(client.get(f"{PREFIX}done") or 0) >= target:
            return time.monotonic()
        time.sleep(0.005)
    raise TimeoutError(f"only {client.get(f'{PREFIX}done')} of {target} done")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


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
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass


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


def measure_consume(label: str, n: int, start_consumer: Any) -> tuple[float, Any]:
    """Start the consumer on a full queue; rate from the first completion to the last (startup excluded)."""
    client = _redis()
    client.set(f"{PREFIX}done", 0)
    proc = start_consumer()
    deadline = time.monotonic() + 180
    while int(client.get(f"{PREFIX}done") or 0) < 1:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{label} consumer did not start")
        time.sleep(0.002)
    first = time.monotonic()
    first_count = int(client.get(f"{PREFIX}done") or 0)
    finished = wait_count(n, timeout=600)
    rate = (n - first_count) / max(finished - first, 1e-9)
    print(f"{label:8s} consumed {n}: {rate:.0f}/s", flush=True)
    return rate, proc


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
        deadline = t0 + 60
        while not DeadLetter.objects.filter(task_id=task_id).exists():
            if time.monotonic() > deadline:
                raise TimeoutError("dead letter not archived")
            time.sleep(0.002)
        dead.append(time.monotonic() - t0)
    connections.close_all()
    return {"ok": ok, "dead": dead}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--dead-letters", type=int, default=30)
    parser.add_argument("--raw-consumer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_consumer:
        raw_consumer_main()
        return

    env = base_env()
    os.environ.update({k: env[k] for k in ("BROKER_URL", "DATABASE_URL", "REDIS_KEY_PREFIX", "DEBUG", "LOG_LEVEL")})
    import django

    django.setup()
    teardown_resources()
    setup_resources(env)
    from kombu import Connection

    from apps.eventbus.queues import declare_topology

    with Connection(env["BROKER_URL"]) as conn:
        declare_topology(conn.default_channel)
    procs: list[subprocess.Popen] = []
    try:
        # 1. raw kombu: publish N with confirms, then one consumer process drains them
        raw_pub = measure_publish("raw", args.tasks, raw_publish)
        raw_con, raw = measure_consume(
            "raw",
            args.tasks,
            lambda: subprocess.Popen(
                [sys.executable, __file__, "--raw-consumer"],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            ),
        )
        procs.append(raw)
        stop(raw)

        # 2. Celery: send_task N, then the Procfile's realtime worker drains them
        cel_pub = measure_publish("celery", args.tasks, celery_publish)
        log = open(REPO / "bench" / "results" / ".queue-worker.log", "w")  # noqa: SIM115 - closed below
        cel_con, worker = measure_consume(
            "celery",
            args.tasks,
            lambda: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "project",
                    "worker",
                    "-Q",
                    "ai.realtime",
                    "-n",
                    "bench@%h",
                    "--pool",
                    "threads",
                    "--concurrency",
                    "8",
                    "-I",
                    "bench.queue",
                    "--without-mingle",
                    "--without-gossip",
                    "--loglevel",
                    "WARNING",
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
        )
        procs.append(worker)
        archiver = subprocess.Popen(
            [sys.executable, "manage.py", "run_deadletter_archiver"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(archiver)
        time.sleep(3)  # the archiver's Django start-up

        # 3. dead-letter round trip
        trips = round_trips(args.dead_letters)
    finally:
        for proc in reversed(procs):
            stop(proc)
        teardown_resources()
        (REPO / "bench" / "results" / ".queue-worker.log").unlink(missing_ok=True)

    raw_total = 1 / (1 / raw_pub + 1 / raw_con)
    cel_total = 1 / (1 / cel_pub + 1 / cel_con)
    ratio = cel_total / raw_total
    ok_med, dead_med = statistics.median(trips["ok"]) * 1000, statistics.median(trips["dead"]) * 1000
    ok_p95, dead_p95 = pct(trips["ok"], 0.95) * 1000, pct(trips["dead"], 0.95) * 1000
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
        f"Python {platform.python_version()}, RabbitMQ 3.10.8 (quorum queue `ai.realtime`, vhost `{NAME}`).",
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
    (REPO / "bench" / "results" / "queue.md").write_text("\n".join(lines) + "\n")
    print("wrote bench/results/queue.md")


if __name__ == "__main__":
    main()
