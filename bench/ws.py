"""WebSocket benchmark: ping round trips at 1,000 open connections, broadcast latency.

Run (from the repository root; needs the local PostgreSQL and Redis):

    .venv/bin/python bench/ws.py

Options: ``--idle N`` idle connections (default: enough for 1,000 open in all),
``--pingers M`` active ping clients (20, 10 pings/s each), ``--seconds S`` per ping phase (8),
``--trials10 T`` / ``--trials100 T`` broadcast trials per group size (60 / 30),
``--layers pubsub,core`` the channel layers to measure, each on its own server process.

One uvicorn process (as in the Procfile: ``--ws websockets``) serves every
connection. The benchmark uses a database of its own (``bench_ws``, created,
migrated and dropped) and the Redis key prefix ``bench_ws``, so it disturbs no
one. Measured in the same run:

- ping -> pong round trip (p50/p95/p99) with only the M pingers open (baseline)
  and again with N idle + all other connections open (1,000 in total);
- broadcast latency to every subscriber at group sizes 10 and 100:
  (a) raw channels-redis ``group_send`` from this process to the same consumers
  (the floor: layer + consumer + socket), (b) ``POST /events/`` (REST append)
  from request start to each subscriber's receipt, (c) the same from the
  event's ``created_at`` (inside the append's transaction) to receipt, which
  leaves out the HTTP request's own cost.

Writes ``bench/results/ws.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # bench/ first on sys.path would let bench/queue.py shadow the stdlib's queue
    sys.path[:] = [str(Path(__file__).resolve().parents[1]), *sys.path[1:]]

from bench._lib import support

BENCH = support.Resources(
    "bench_ws",
    pg=os.environ.get("BENCH_PG_URL", support.LOCAL_PG),
    redis_url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
)
REDIS_URL = BENCH.redis_url
PREFIX = BENCH.name
PASSWORD = "bench-Secret-123"  # noqa: S105 - throwaway bench users
LAYERS = {
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "core": "channels_redis.core.RedisChannelLayer",
}


def bench_env() -> dict[str, str]:
    return BENCH.env(
        REDIS_URL=REDIS_URL,
        # The benchmark opens ~1,000 connections as a handful of users.
        WS_MAX_CONNECTIONS_PER_USER="100000",
        THROTTLE_USER_RATE="1000000/min",
    )


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    target = min(target, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def make_fixtures(*, sessions_needed: int) -> dict[str, Any]:
    """One owner, one subscriber user; sessions for idle load and the two broadcast groups."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from apps.context.models import Participant
    from apps.context.services import participant_add, session_create

    User = get_user_model()  # noqa: N806 - a class
    owner = User.objects.create_user(username="bench-owner", password=PASSWORD)
    reader = User.objects.create_user(username="bench-reader", password=PASSWORD)
    sessions = []
    for i in range(sessions_needed):
        session = session_create(owner=owner, title=f"bench {i}")
        participant_add(session=session, actor=owner, username=reader.username, role=Participant.Role.EDITOR)
        sessions.append(str(session.pk))
    return {
        "owner_token": Token.objects.create(user=owner).key,
        "reader_token": Token.objects.create(user=reader).key,
        "sessions": sessions,
    }


stats = {"retries": 0}


def percentiles(values: list[float]) -> dict[str, float]:
    figures = {f"p{q}": support.percentile(values, q / 100) for q in (50, 95, 99)}
    if not values:
        return {"n": 0, **figures, "max": float("nan")}
    return {"n": len(values), **figures, "max": max(values), "mean": statistics.fmean(values)}


class Conn:
    """One client connection with a reader task that timestamps every frame."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.waiters: dict[Any, asyncio.Future] = {}
        self.on_event: Any = None
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.time()
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "pong":
                    fut = self.waiters.pop(("pong", frame.get("t")), None)
                    if fut and not fut.done():
                        fut.set_result(now)
                elif kind == "error":
                    print(f"error frame: {frame}", file=sys.stderr)
                elif self.on_event is not None and kind in ("event", "suggestion"):
                    self.on_event(frame, now)
        except Exception:  # noqa: BLE001, S110 - a closed benchmark connection ends its reader
            pass

    async def ping(self, t: str) -> float:
        fut = asyncio.get_running_loop().create_future()
        self.waiters[("pong", t)] = fut
        start = time.time()
        await self.ws.send(json.dumps({"type": "ping", "t": t}))
        end = await asyncio.wait_for(fut, 10)
        return (end - start) * 1000

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


async def open_conns(url_for: Any, count: int, *, concurrency: int = 25) -> list[Conn]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    sem = asyncio.Semaphore(concurrency)
    conns: list[Conn] = []

    async def one(i: int) -> None:
        async with sem:
            for attempt in range(10):
                try:
                    ws = await connect(url_for(i), open_timeout=30, ping_interval=None, max_queue=None)
                    hello = json.loads(await ws.recv())
                except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
                    # 1013 (busy) or a handshake dropped under load: a real client
                    # backs off and retries; the count goes into the results.
                    if attempt == 9:
                        raise
                    stats["retries"] += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                if hello["type"] != "hello":
                    raise RuntimeError(f"expected hello, got {hello}")
                conns.append(Conn(ws))
                return

    await asyncio.gather(*(one(i) for i in range(count)))
    return conns


async def ping_phase(pingers: list[Conn], seconds: float) -> list[float]:
    rtts: list[float] = []
    stop = time.monotonic() + seconds

    async def loop(conn: Conn, idx: int) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            rtts.append(await conn.ping(f"{idx}-{n}"))
            # 10 pings/s per connection: inside the server's per-connection rate limit.
            await asyncio.sleep(0.1)

    await asyncio.gather(*(loop(c, i) for i, c in enumerate(pingers)))
    return rtts


async def broadcast_phase(
    *, port: int, session_id: str, subscribers: list[Conn], owner_token: str, trials: int, layer_name: str
) -> dict[str, list[float]]:
    import httpx
    from django.utils.module_loading import import_string

    from apps.realtime.broadcast import session_group_name

    # The same class and config the server runs, so raw group_send reaches the same consumers.
    layer = import_string(LAYERS[layer_name])(
        hosts=[{"address": REDIS_URL, "socket_timeout": None}], prefix=f"{PREFIX}:asgi", capacity=1500, expiry=60
    )
    group = session_group_name(session_id)
    pending: dict[str, dict[int, float]] = {}
    done: dict[str, asyncio.Event] = {}
    size = len(subscribers)

    def receiver(index: int) -> Any:
        def on_event(frame: dict[str, Any], now: float) -> None:
            key = frame.get("data", {}).get("text") if frame["type"] == "event" else frame.get("bench_key")
            if key in pending:
                pending[key][index] = now
                if len(pending[key]) == size:
                    done[key].set()

        return on_event

    for i, conn in enumerate(subscribers):
        conn.on_event = receiver(i)

    out: dict[str, list[float]] = {
        "raw": [],
        "rest": [],
        "commit": [],
        "raw_last": [],
        "rest_last": [],
        "rest_response": [],
    }
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Authorization": f"Token {owner_token}"}
    ) as http:
        for trial in range(trials + 5):
            warmup = trial < 5
            # (a) raw group_send: the same group message shape session_broadcast sends.
            key = f"raw-{size}-{trial}"
            pending[key], done[key] = {}, asyncio.Event()
            start = time.time()
            await layer.group_send(
                group, {"type": "session.message", "message": {"type": "suggestion", "bench_key": key}}
            )
            await asyncio.wait_for(done[key].wait(), 10)
            if not warmup:
                lat = [(t - start) * 1000 for t in pending[key].values()]
                out["raw"] += lat
                out["raw_last"].append(max(lat))
            await asyncio.sleep(0.01)
            # (b)/(c) REST append -> every subscriber's event frame.
            key = f"rest-{size}-{trial}"
            pending[key], done[key] = {}, asyncio.Event()
            start = time.time()
            response = await http.post(
                f"/api/v1/sessions/{session_id}/events/", json={"event_type": "context_update", "data": {"text": key}}
            )
            answered = time.time()
            if response.status_code != 201:
                raise RuntimeError(f"append failed: {response.text}")
            created = datetime.fromisoformat(response.json()["created_at"]).timestamp()
            await asyncio.wait_for(done[key].wait(), 10)
            if not warmup:
                lat = [(t - start) * 1000 for t in pending[key].values()]
                out["rest"] += lat
                out["rest_last"].append(max(lat))
                out["commit"] += [(t - created) * 1000 for t in pending[key].values()]
                out["rest_response"].append((answered - start) * 1000)
            await asyncio.sleep(0.01)
    await (layer.flush() if layer_name == "pubsub" else layer.close_pools())
    return out


def fmt(stats: dict[str, float]) -> str:
    return f"{stats['p50']:.2f} / {stats['p95']:.2f} / {stats['p99']:.2f} (n={stats['n']})"


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(
    args: argparse.Namespace, fixtures: dict[str, Any], port: int, layer_name: str, server_pid: int
) -> dict[str, Any]:
    reader, owner = fixtures["reader_token"], fixtures["owner_token"]
    sessions = fixtures["sessions"]
    idle_sessions, group10, group100 = sessions[:-2], sessions[-2], sessions[-1]

    def url(session_id: str, token: str) -> str:
        return f"ws://127.0.0.1:{port}/ws/sessions/{session_id}/?token={token}"

    results: dict[str, Any] = {}
    pingers = await open_conns(lambda i: url(idle_sessions[i % len(idle_sessions)], reader), args.pingers)
    await ping_phase(pingers, 1.0)  # warm-up
    results["ping_baseline"] = percentiles(await ping_phase(pingers, args.seconds))
    results["open_baseline"] = len(pingers)

    subs10 = await open_conns(lambda i: url(group10, reader), 10)
    subs100 = await open_conns(lambda i: url(group100, reader), 100)
    idle_count = args.idle if args.idle is not None else max(0, 1000 - args.pingers - 110)
    t0 = time.monotonic()
    idle = await open_conns(lambda i: url(idle_sessions[i % len(idle_sessions)], reader), idle_count)
    results["connect_s"] = time.monotonic() - t0
    results["retries"] = stats["retries"]
    total_open = len(pingers) + len(subs10) + len(subs100) + len(idle)
    results["open_total"] = total_open
    results["idle"] = len(idle)
    await asyncio.sleep(1.0)
    # What 1,000 quiet connections cost the server (heartbeats, WebSocket pings).
    cpu_before = process_cpu_s(server_pid)
    await asyncio.sleep(10.0)
    results["idle_cpu_pct"] = (process_cpu_s(server_pid) - cpu_before) / 10.0 * 100
    await ping_phase(pingers, 1.0)
    results["ping_loaded"] = percentiles(await ping_phase(pingers, args.seconds))

    for size, subs, trials in ((10, subs10, args.trials10), (100, subs100, args.trials100)):
        raw = await broadcast_phase(
            port=port,
            session_id=group10 if size == 10 else group100,
            subscribers=subs,
            owner_token=owner,
            trials=trials,
            layer_name=layer_name,
        )
        results[f"bcast{size}"] = {name: percentiles(values) for name, values in raw.items()}

    for conn in pingers + subs10 + subs100 + idle:
        await conn.close()
    return results


def _layer_section(args: argparse.Namespace, layer_name: str, results: dict[str, Any]) -> list[str]:
    ping_b, ping_l = results["ping_baseline"], results["ping_loaded"]
    b10, b100 = results["bcast10"], results["bcast100"]
    gap10 = b10["rest"]["p95"] - b10["raw"]["p95"]
    gap10_commit = b10["commit"]["p95"] - b10["raw"]["p95"]

    def ok(flag: bool) -> str:
        return "met" if flag else "MISSED"

    lines = [
        f"## Channel layer `{layer_name}` ({LAYERS[layer_name]})",
        "",
        "### Ping round trip",
        "",
        "| open connections | ping -> pong |",
        "|---|---|",
        f"| {results['open_baseline']} (pingers only, baseline) | {fmt(ping_b)} |",
        f"| {results['open_total']} ({results['idle']} idle + {args.pingers} pingers + 110 subscribers) "
        f"| {fmt(ping_l)} |",
        "",
        f"Goal p99 < 20 ms at 1,000 connections: **{ok(ping_l['p99'] < 20)}** "
        f"(p99 {ping_l['p99']:.2f} ms; loaded/baseline p99 ratio {ping_l['p99'] / ping_b['p99']:.2f}). "
        f"Opening the {results['idle']} idle connections took {results['connect_s']:.1f} s "
        f"({results['retries']} handshakes refused or dropped under load and retried). "
        f"With all {results['open_total']} open and quiet, the server process used "
        f"{results['idle_cpu_pct']:.1f}% of one CPU.",
        "",
        "### Broadcast latency (every subscriber's receipt)",
        "",
        "| group size | raw `group_send` (baseline) | REST append, from request start | REST append, from event "
        "`created_at` | last subscriber p95, raw / REST | REST response time |",
        "|---|---|---|---|---|---|",
    ]
    for size, b in ((10, b10), (100, b100)):
        lines.append(
            f"| {size} | {fmt(b['raw'])} | {fmt(b['rest'])} | {fmt(b['commit'])} | "
            f"{b['raw_last']['p95']:.2f} / {b['rest_last']['p95']:.2f} | {fmt(b['rest_response'])} |"
        )
    lines += [
        "",
        f"- Size 10, goal REST p95 within 5 ms of raw: **{ok(gap10 <= 5)}** from request start "
        f"(+{gap10:.2f} ms; the POST itself, parse + auth + transaction, answers in "
        f"p50 {b10['rest_response']['p50']:.2f} ms); from the event's `created_at` (write -> commit -> "
        f"broadcast -> receipt) +{gap10_commit:.2f} ms: **{ok(gap10_commit <= 5)}**.",
        f"- Size 100, goal REST p95 < 50 ms: **{ok(b100['rest']['p95'] < 50)}** "
        f"(p95 {b100['rest']['p95']:.2f} ms; raw {b100['raw']['p95']:.2f} ms; ratio "
        f"{b100['rest']['p95'] / b100['raw']['p95']:.2f}).",
        "",
    ]
    return lines


def write_results(
    args: argparse.Namespace,
    all_results: dict[str, dict[str, Any]],
    fd_limit: int,
    load_before: tuple[float, float, float],
) -> str:
    lines = [
        "# WebSocket benchmark (`bench/ws.py`)",
        "",
        f"Command: `.venv/bin/python bench/ws.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Run: {datetime.now().astimezone().isoformat(timespec='seconds')} on {platform.node()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other work "
        f"(load average {load_before[0]:.1f} / {load_before[1]:.1f} / {load_before[2]:.1f} at the start), "
        f"Python {platform.python_version()}; one uvicorn process (`--ws websockets`, as in the Procfile), "
        f"local PostgreSQL and Redis; the clients run in one asyncio process on the same machine; "
        f"RLIMIT_NOFILE {fd_limit}.",
        "",
        "All figures in milliseconds: p50 / p95 / p99 (n samples). Each layer gets a fresh server process; "
        "the raw `group_send` baseline uses the same layer class and config from the benchmark process.",
        "",
    ]
    for layer_name, results in all_results.items():
        lines += _layer_section(args, layer_name, results)
    lines += [
        "What limits it: one server process on a 2-CPU machine shared with the client process, PostgreSQL, "
        "Redis and other work (see the load average). The list-based core layer pays several Redis round trips "
        "per group member, sequentially in the receiving process, so the last of 100 receipts trails the first; "
        "the pub/sub layer publishes once and fans out in process. The REST figures add the HTTP request "
        "(Django, token auth, one transaction with the outbox rows) before the broadcast starts.",
        "",
    ]
    text = "\n".join(lines)
    support.write_results("ws", text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=None)
    parser.add_argument("--pingers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--trials10", type=int, default=60)
    parser.add_argument("--trials100", type=int, default=30)
    parser.add_argument("--layers", default="pubsub,core", help="comma-separated: pubsub, core")
    args = parser.parse_args()

    fd_limit = raise_fd_limit()
    BENCH.setup(vhost=False, migrate=True)
    BENCH.clear_redis()
    try:
        support.django_setup(bench_env())
        fixtures = make_fixtures(sessions_needed=52)
        from django.db import connections

        connections.close_all()
        load_before = os.getloadavg()
        all_results: dict[str, dict[str, Any]] = {}
        for layer_name in args.layers.split(","):
            port = support.free_port()
            with support.Processes() as procs:
                cmd = support.uvicorn("project.asgi:application", port=port, options=("--ws", "websockets"))
                server = procs.start(
                    "server",
                    [*cmd, "--backlog", "4096"],
                    env={**bench_env(), "CHANNEL_LAYER_BACKEND": LAYERS[layer_name]},
                )
                support.wait_http(f"http://127.0.0.1:{port}/healthz")
                print(f"[{layer_name}] server on :{port}", file=sys.stderr)
                stats["retries"] = 0
                all_results[layer_name] = asyncio.run(run(args, fixtures, port, layer_name, server.pid))
                # Written after each layer, so one layer's figures survive a failure in the next.
                write_results(args, all_results, fd_limit, load_before)
            BENCH.clear_redis()
        print(write_results(args, all_results, fd_limit, load_before))
    finally:
        BENCH.teardown(vhost=False)


if __name__ == "__main__":
    main()
