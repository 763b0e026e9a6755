"""Benchmark of the multi-level cache (apps/caching) on the real API.

Run from the repository root:

    .venv/bin/python bench/cache.py

What it does, all in one run:

1. Creates its own PostgreSQL database ``bench_cache`` (migrated), Redis key
   prefix ``bench_cache``, and fills it through the services: users with
   tokens, sessions with three participants each, a few events each.
2. Starts the real ASGI server (uvicorn, ``project.asgi``) twice, once with
   ``CACHE_ENABLED=0`` (the baseline) and once with ``CACHE_ENABLED=1``, and
   drives each with the same seeded 90/10 read/write workload over HTTP
   (reads: the context snapshot and the session; writes: an event append).
   The server counts every SQL statement it executes (a Django
   ``execute_wrapper`` on each connection, reported by a bench-only route that
   exists only in this module's ASGI wrapper), so queries per request are
   counted, not estimated. Throughput and p50/p95 latency come from the client.
3. Measures, in this process, the L1 hit latency and the L2 hit latency.
4. Starts subscriber processes and measures the invalidation lag across
   processes (publish to applied in the other process's L1), p50/p99/max.
5. Prints the figures and writes ``bench/results/cache.md``; drops the
   database and the Redis keys.

Options: ``--ops N`` measured requests per phase (default 1500),
``--concurrency C`` (default 8), ``--sessions S`` (default 40).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # bench/ first on sys.path would let bench/queue.py shadow the stdlib's queue
    sys.path[:] = [str(Path(__file__).resolve().parents[1]), *sys.path[1:]]

from bench._lib import support

BENCH = support.Resources("bench_cache", pg=os.environ.get("BENCH_PG", support.LOCAL_PG))


def _env(**extra: str) -> dict[str, str]:
    rates = {f"THROTTLE_{who}_RATE": "100000000/min" for who in ("USER", "IP", "ANON")}
    return BENCH.env(**rates, **extra)


# --- the server side: the real ASGI app plus a query counter ------------------


def server_app() -> Any:
    """uvicorn --factory bench.cache:server_app — the project's ASGI app, counting SQL."""
    from django.db.backends.signals import connection_created

    from project.asgi import application  # sets Django up

    lock = threading.Lock()
    counted = {"queries": 0}

    def count(execute, sql, params, many, context):  # noqa: ANN001, ANN202
        with lock:
            counted["queries"] += 1
        return execute(sql, params, many, context)

    def install(sender, connection, **kwargs: object) -> None:  # noqa: ANN001
        connection.execute_wrappers.append(count)

    connection_created.connect(install, weak=False)

    async def app(scope, receive, send):  # noqa: ANN001, ANN202
        if scope["type"] == "http" and scope["path"] == "/__bench__/queries":
            from apps.caching.cache import cache_stats

            body = json.dumps({"queries": counted["queries"], "cache": cache_stats()}).encode()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await application(scope, receive, send)

    return app


# --- set-up -----------------------------------------------------------------


def seed(sessions: int) -> list[dict[str, Any]]:
    """Users, tokens and sessions through the real services; returns (session, tokens) rows."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from apps.context import services

    rng = random.Random(7)
    User = get_user_model()  # noqa: N806
    password = "x-Secret-123"  # noqa: S105 - throwaway bench users
    users = [User.objects.create_user(username=f"bench{i}", password=password) for i in range(20)]
    tokens = {u.pk: Token.objects.create(user=u).key for u in users}
    rows = []
    for n in range(sessions):
        owner, *others = rng.sample(users, 3)
        session = services.session_create(owner=owner, title=f"Bench {n}")
        for other in others:
            services.participant_add(session=session, actor=owner, username=other.username, role="editor")
        services.context_event_append(
            session=session,
            author=owner,
            events=[services.EventInput(event_type="context_update", data={"text": f"seed {i}"}) for i in range(20)],
        )
        rows.append({"id": str(session.pk), "tokens": [tokens[u.pk] for u in (owner, *others)]})
    return rows


# --- the HTTP workload ----------------------------------------------------------


def start_server(procs: support.Processes, *, cache_enabled: bool) -> str:
    """uvicorn on the bench app (``server_app`` below); its URL once it answers."""
    port = support.free_port()
    cmd = support.uvicorn("bench.cache:server_app", port=port, options=("--factory",))
    procs.start("server", cmd, env=_env(CACHE_ENABLED="1" if cache_enabled else "0"))
    url = f"http://127.0.0.1:{port}"
    support.wait_http(f"{url}/__bench__/queries", timeout=90)
    return url


def plan(rows: list[dict[str, Any]], ops: int, seed_: int, write_share: float = 0.10) -> list[tuple[str, str, str]]:
    rng = random.Random(seed_)
    out = []
    for _ in range(ops):
        row = rng.choice(rows)
        token = rng.choice(row["tokens"])
        r = rng.random()
        kind = "write" if r < write_share else ("context" if r < write_share + (1 - write_share) * 2 / 3 else "session")
        out.append((kind, row["id"], token))
    return out


async def drive(url: str, ops: list[tuple[str, str, str]], concurrency: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue = asyncio.Queue()
    for op in ops:
        queue.put_nowait(op)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                kind, sid, token = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            headers = {"Authorization": f"Token {token}"}
            started = time.perf_counter()
            if kind == "write":
                response = await client.post(
                    f"/api/v1/sessions/{sid}/events/",
                    json={"event_type": "context_update", "data": {"text": "bench write"}},
                    headers=headers,
                )
            elif kind == "context":
                response = await client.get(f"/api/v1/sessions/{sid}/context/", headers=headers)
            else:
                response = await client.get(f"/api/v1/sessions/{sid}/", headers=headers)
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "elapsed": elapsed,
        "throughput": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95)] * 1000,
        "statuses": statuses,
    }


def run_phase(*, cache_enabled: bool, rows: list[dict[str, Any]], ops: int, concurrency: int) -> dict[str, Any]:
    import httpx

    with support.Processes() as procs:
        url = start_server(procs, cache_enabled=cache_enabled)
        warm = plan(rows, max(300, ops // 10), seed_=1)
        asyncio.run(drive(url, warm, concurrency))

        def queries() -> int:
            return httpx.get(f"{url}/__bench__/queries", timeout=5).json()["queries"]

        before = queries()
        mixed = asyncio.run(drive(url, plan(rows, ops, seed_=2), concurrency))
        mixed["queries"] = queries() - before
        before = queries()
        reads = asyncio.run(drive(url, plan(rows, ops // 3, seed_=3, write_share=0.0), concurrency))
        reads["queries"] = queries() - before
        stats = httpx.get(f"{url}/__bench__/queries", timeout=5).json()["cache"]
        return {"mixed": mixed, "reads": reads, "cache": stats}


def _ready(cache: Any) -> None:
    if not cache.wait_ready(10):
        raise RuntimeError("the cache's invalidation channel did not come up")


# --- in-process latencies ---------------------------------------------------------


def hit_latencies(samples: int = 50_000) -> dict[str, float]:
    from django.conf import settings

    from apps.caching.cache import MultiLevelCache

    cache = MultiLevelCache(redis_url=settings.REDIS_URL, prefix=f"{BENCH.name}:lat")
    _ready(cache)
    snapshot_like = {
        "session_id": "x" * 36,
        "title": "Bench",
        "state": "open",
        "metadata": {},
        "last_seq": 50,
        "participants": [
            {"username": f"u{i}", "role": "editor", "joined_at": "2026-01-01T00:00:00+00:00"} for i in range(3)
        ],
        "recent_events": [
            {
                "seq": i,
                "event_type": "context_update",
                "data": {"text": "lorem ipsum " * 4},
                "user": "u1",
                "client_msg_id": None,
                "created_at": "2026-01-01T00:00:00+00:00",
            }
            for i in range(50)
        ],
    }

    def summary(per_call_ns: list[float], batch_ns: list[float]) -> dict[str, float]:
        per_call_ns.sort()
        batch_ns.sort()
        n = len(per_call_ns)
        return {
            # Batches of calls timed together: the median batch is the typical cost
            # per hit, untouched by the odd preemption on a busy machine.
            "batch_median_us": batch_ns[len(batch_ns) // 2] / 1000,
            "batch_best_us": batch_ns[0] / 1000,
            "mean_us": statistics.fmean(per_call_ns) / 1000,
            "p50_us": per_call_ns[n // 2] / 1000,
            "p99_us": per_call_ns[int(n * 0.99)] / 1000,
        }

    def measure(key: str, value: Any, copy: bool, n: int, batch: int = 200) -> dict[str, float]:
        cache.get_or_load(key, lambda: value, ttl=300, copy=copy)
        clock = time.perf_counter_ns
        per_call, batches = [], []
        for _ in range(n // batch):
            batch_started = clock()
            for _ in range(batch):
                cache.get_or_load(key, lambda: value, ttl=300, copy=copy)
            batches.append((clock() - batch_started) / batch)
        for _ in range(n):
            started = clock()
            cache.get_or_load(key, lambda: value, ttl=300, copy=copy)
            per_call.append(clock() - started)
        return summary(per_call, batches)

    out = {
        "l1_shared_small": measure("lat:shared", ("participant", 1, "editor"), False, samples),
        "l1_copy_small": measure("lat:small", {"id": 1, "role": "editor", "user_id": 7}, True, samples),
        "l1_copy_snapshot": measure("lat:snap", snapshot_like, True, samples // 5, batch=20),
    }
    # L2: drop L1 before each read, so every read is an L2 hit promoted to L1.
    cache.get_or_load("lat:l2", lambda: snapshot_like, ttl=300)
    times = []
    for _ in range(3000):
        cache.local.clear()
        started = time.perf_counter_ns()
        cache.get_or_load("lat:l2", lambda: snapshot_like, ttl=300)
        times.append(time.perf_counter_ns() - started)
    groups = [statistics.fmean(times[i : i + 20]) for i in range(0, len(times), 20)]
    out["l2_copy_snapshot"] = summary(times, groups)
    cache.close()
    return out


# --- invalidation lag across processes ---------------------------------------------

_SUBSCRIBER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import django
django.setup()
from apps.caching.cache import MultiLevelCache
cache = MultiLevelCache(redis_url=sys.argv[2], prefix=sys.argv[3])
assert cache.wait_ready(10)
# Keep the invalidated key in L1 so each message really evicts something.
print("ready", flush=True)
expected = int(sys.argv[4])
deadline = time.monotonic() + 120
while cache.counters.invalidations_received < expected and time.monotonic() < deadline:
    cache.get_or_load("lag:key", lambda: 1, ttl=300)
    time.sleep(0.001)
lag = cache.invalidation_lag
print(json.dumps({"received": lag.count, "samples": list(lag.recent)}), flush=True)
cache.close()
"""


def invalidation_lag(*, subscribers: int = 3, messages: int = 1000) -> dict[str, Any]:
    from django.conf import settings

    from apps.caching.cache import MultiLevelCache

    prefix = f"{BENCH.name}:lag"
    procs = [
        subprocess.Popen(
            [support.PY, "-c", _SUBSCRIBER, str(support.REPO), settings.REDIS_URL, prefix, str(messages)],
            cwd=support.REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(subscribers)
    ]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("invalidation subscriber did not start")
    publisher = MultiLevelCache(redis_url=settings.REDIS_URL, prefix=prefix)
    _ready(publisher)
    rng = random.Random(5)
    for _ in range(messages):
        publisher.invalidate(keys=["lag:key"])
        time.sleep(rng.uniform(0.001, 0.004))
    samples: list[float] = []
    for proc in procs:
        line = proc.stdout.readline()
        proc.wait(timeout=30)
        samples.extend(json.loads(line)["samples"])
    publisher.close()
    samples.sort()
    return {
        "subscribers": subscribers,
        "messages": messages,
        "samples": len(samples),
        "p50_ms": samples[len(samples) // 2] * 1000,
        "p99_ms": samples[int(len(samples) * 0.99)] * 1000,
        "max_ms": samples[-1] * 1000,
    }


# --- report ----------------------------------------------------------------------


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    off, on = results["off"], results["on"]

    def qpr(phase: dict[str, Any]) -> float:
        return phase["queries"] / phase["requests"]

    mixed_cut = 1 - qpr(on["mixed"]) / qpr(off["mixed"])
    read_cut = 1 - qpr(on["reads"]) / qpr(off["reads"])
    lat = results["latency"]
    lag = results["lag"]
    cache = on["cache"]
    lines = [
        "# Multi-level cache benchmark",
        "",
        f"Command: `.venv/bin/python bench/cache.py --ops {args.ops} --concurrency {args.concurrency} "
        f"--sessions {args.sessions}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'unknown CPU'}), "
        f"Python {platform.python_version()}; load average at start {results['loadavg']} "
        "(the machine is shared with other work, so absolute rates are noisy; ratios are from the same run).  ",
        f"Run at {results['when']}. One uvicorn process per phase, client on the same machine, "
        f"{args.concurrency} concurrent connections, {args.sessions} sessions x 3 participants, "
        f"database `{BENCH.name}`.",
        "",
        "## Real API, 90/10 read/write (reads: 2/3 context snapshot, 1/3 session; writes: event append)",
        "",
        "| | cache off | cache on | change |",
        "|---|---|---|---|",
        f"| DB queries per request (counted in the server) | {qpr(off['mixed']):.2f} | {qpr(on['mixed']):.2f} "
        f"| {mixed_cut:.0%} fewer |",
        f"| throughput (req/s) | {off['mixed']['throughput']:.0f} | {on['mixed']['throughput']:.0f} "
        f"| x{on['mixed']['throughput'] / off['mixed']['throughput']:.2f} |",
        f"| p50 latency (ms) | {off['mixed']['p50_ms']:.1f} | {on['mixed']['p50_ms']:.1f} | |",
        f"| p95 latency (ms) | {off['mixed']['p95_ms']:.1f} | {on['mixed']['p95_ms']:.1f} "
        f"| x{on['mixed']['p95_ms'] / off['mixed']['p95_ms']:.2f} |",
        f"| requests / statuses | {off['mixed']['requests']} {off['mixed']['statuses']} "
        f"| {on['mixed']['requests']} {on['mixed']['statuses']} | |",
        "",
        "Reads only (the cached paths):",
        "",
        "| | cache off | cache on | change |",
        "|---|---|---|---|",
        f"| DB queries per request | {qpr(off['reads']):.2f} | {qpr(on['reads']):.2f} | {read_cut:.0%} fewer |",
        f"| throughput (req/s) | {off['reads']['throughput']:.0f} | {on['reads']['throughput']:.0f} "
        f"| x{on['reads']['throughput'] / off['reads']['throughput']:.2f} |",
        f"| p95 latency (ms) | {off['reads']['p95_ms']:.1f} | {on['reads']['p95_ms']:.1f} | |",
        "",
        f"Cache counters in the cache-on server at the end: L1 hits {cache['l1']['hits']}, "
        f"L1 misses {cache['l1']['misses']}, L2 hits {cache['l2']['hits']}, L2 misses {cache['l2']['misses']}, "
        f"loads {cache['l3']['loads']}, stale fills refused {cache['stale_fills_refused']}, "
        f"invalidations sent {cache['invalidations']['sent']}.",
        "",
        "## Hit latency (in process, this machine)",
        "",
        "| path | per hit, median batch (us) | best batch (us) | single call p50 (us) | p99 (us) | mean (us) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {v['batch_median_us']:.2f} | {v['batch_best_us']:.2f} | {v['p50_us']:.2f} "
            f"| {v['p99_us']:.2f} | {v['mean_us']:.2f} |"
            for name, v in lat.items()
        ),
        "",
        "`shared`: L1 keeps the object (`copy=False`); `copy`: L1 keeps the pickled bytes and each hit unpickles "
        "a private copy (the default; the snapshot is 50 events). L2: L1 dropped before each read, so each read is "
        "one Redis round trip plus unpickling and promotion. Batch columns time 200 hits together (20 for the "
        "snapshot and L2) and divide; single-call columns time each call, so their tail and mean carry every "
        "preemption of this shared machine.",
        "",
        "## Invalidation lag across processes",
        "",
        f"{lag['messages']} key invalidations published by one process, applied by {lag['subscribers']} subscriber "
        f"processes ({lag['samples']} samples; publish to applied in the other process's L1, same clock):",
        "",
        f"p50 {lag['p50_ms']:.2f} ms, p99 {lag['p99_ms']:.2f} ms, max {lag['max_ms']:.2f} ms.",
        "",
        "## Goals",
        "",
        f"- >= 80% fewer DB queries with the cache on: mixed 90/10 {mixed_cut:.0%}, reads only {read_cut:.0%}.",
        f"- L1 hit < 10 us (median batch): shared {lat['l1_shared_small']['batch_median_us']:.2f} us, "
        f"copy (small) {lat['l1_copy_small']['batch_median_us']:.2f} us; the 50-event snapshot with a private "
        f"copy costs {lat['l1_copy_snapshot']['batch_median_us']:.2f} us, nearly all of it unpickling "
        f"(vs {lat['l2_copy_snapshot']['batch_median_us']:.0f} us from L2).",
        f"- cross-process invalidation p99 < 100 ms: {lag['p99_ms']:.2f} ms.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=40)
    args = parser.parse_args()

    results: dict[str, Any] = {
        "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    BENCH.clear_redis()
    print("creating and migrating the bench database ...", flush=True)
    BENCH.setup(vhost=False, migrate=True)
    try:
        support.django_setup(_env(CACHE_ENABLED="1"))
        rows = seed(args.sessions)
        from django.db import connections

        connections.close_all()
        for name, enabled in (("off", False), ("on", True)):
            print(f"phase: cache {name} ...", flush=True)
            results[name] = run_phase(cache_enabled=enabled, rows=rows, ops=args.ops, concurrency=args.concurrency)
            print(json.dumps({k: v for k, v in results[name].items() if k != "cache"}, indent=1), flush=True)
        print("hit latencies ...", flush=True)
        results["latency"] = hit_latencies()
        print(json.dumps(results["latency"], indent=1), flush=True)
        print("invalidation lag ...", flush=True)
        results["lag"] = invalidation_lag()
        print(json.dumps(results["lag"], indent=1), flush=True)
    finally:
        BENCH.teardown(vhost=False)
    text = report(results, args)
    support.write_results("cache", text)
    print(text)


if __name__ == "__main__":
    main()
