"""REST API benchmark: candidate servers side by side, then the path as deployed.

Run (from the repository root, with PostgreSQL and Redis up):

    .venv/bin/python bench/api.py            # ~2 minutes; writes bench/results/api.md
    .venv/bin/python bench/api.py --quick    # shorter phases, for a smoke run

What it does:

1. Creates a dedicated database ``bench_api`` (dropped at the end) and migrates
   it; uses the Redis key prefix ``bench_api`` (its keys deleted at the end).
   Settings: ``bench/_lib/api_settings.py`` (production middleware, auth and
   throttles; the bench-only URL conf ``bench/_lib/api_urls.py`` adds the bare view).
2. Starts ``uvicorn project.asgi:application`` (one worker) as a subprocess.
3. Drives it from a separate load-generator process: a minimal asyncio
   HTTP/1.1 keep-alive client (far cheaper per request than httpx, so on two
   cores the generator does not starve the server and cap the baseline).
4. Measures, in one run:
   - the baseline: ``GET /bench/bare/`` (Django ``JsonResponse``, same server
     and middleware, no DRF/auth/DB): peak throughput over a concurrency sweep;
   - ``GET /api/v1/sessions/{id}/context/`` (token auth, participant check,
     throttles, multi-level cached snapshot): peak over the same sweep, then an
     open-loop run at 70% of that peak for p50/p95/p99 (latency counted from
     the scheduled send time, so queueing is not hidden);
   - event appends: single events and batches of 100 (closed loop), in events/s.
5. Prints the figures and writes ``bench/results/api.md``.

Goals: snapshot p95 < 50 ms at 70% of its peak; snapshot peak >= 0.6x the bare
view's; batch append >= 10x the events/s of single appends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # bench/ first on sys.path would let bench/queue.py shadow the stdlib's queue
    sys.path[:] = [str(Path(__file__).resolve().parents[1]), *sys.path[1:]]

from bench._lib import support

PY = support.PY
# The PostgreSQL server this environment's DATABASE_URL names, with a database of our own on it.
BENCH = support.Resources(
    "bench_api",
    pg=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/context_engine").rsplit("/", 1)[0],
    settings="bench._lib.api_settings",
)


# --- the load generator (runs in its own process) ------------------------------


def build_request(method: str, path: str, token: str | None, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token:
        lines.append(f"Authorization: Token {token}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """The status, and whether the server closes the connection after this response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    closes = b"connection: close" in lower
    index = lower.find(b"content-length:")
    if index >= 0:
        end = lower.index(b"\r\n", index)
        await reader.readexactly(int(lower[index + 15 : end]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, closes


async def _closed_loop(port: int, request: bytes, concurrency: int, duration: float, warmup: float) -> dict:
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop = measure_from + duration

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                writer.write(request)
                status, closes = await _read_response(reader)
                if closes:  # a server without keep-alive (gunicorn sync): a new connection, counted in the latency
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    if status >= 400:
                        errors += 1
                    latencies.append(t1 - t0)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"count": len(latencies), "errors": errors, "seconds": duration, "latencies": latencies}


async def _open_loop(port: int, request: bytes, rate: float, duration: float, max_conns: int) -> dict:
    """Send at a fixed rate; latency from the scheduled time (no coordinated omission)."""
    pool: asyncio.Queue = asyncio.Queue()
    opened = 0
    latencies: list[float] = []
    errors = 0

    async def one(scheduled: float) -> None:
        nonlocal opened, errors
        if pool.empty() and opened < max_conns:
            opened += 1
            conn = await asyncio.open_connection("127.0.0.1", port)
        else:
            conn = await pool.get()
        reader, writer = conn
        writer.write(request)
        status, closes = await _read_response(reader)
        latencies.append(time.perf_counter() - scheduled)
        if status >= 400:
            errors += 1
        if closes:
            writer.close()
            opened -= 1
        else:
            pool.put_nowait(conn)

    total = int(rate * duration)
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait()[1].close()
    return {"count": len(latencies), "errors": errors, "seconds": elapsed, "latencies": latencies, "target_rate": rate}


def loadgen_main(spec: dict) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    request = build_request(
        spec["method"], spec["path"], spec.get("token"), spec["body"].encode() if spec.get("body") is not None else None
    )
    if spec["mode"] == "closed":
        result = asyncio.run(_closed_loop(spec["port"], request, spec["concurrency"], spec["duration"], spec["warmup"]))
    else:
        result = asyncio.run(_open_loop(spec["port"], request, spec["rate"], spec["duration"], spec["max_conns"]))
    print(json.dumps(result))


def run_load(**spec: Any) -> dict:
    proc = subprocess.run([PY, __file__, "--loadgen", json.dumps(spec)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    lat = result.pop("latencies")
    result["rps"] = result["count"] / result["seconds"] if result["seconds"] else 0.0
    result.update({f"p{q}": support.percentile(lat, q / 100) * 1000 for q in (50, 95, 99)})
    result["mean"] = statistics.fmean(lat) * 1000 if lat else 0
    return result


# --- orchestration -----------------------------------------------------------


def bench_env() -> dict[str, str]:
    # The settings module sets DEBUG and the log level; nothing here talks to the broker.
    return BENCH.env(DEBUG=None, BROKER_URL=None, LOG_LEVEL=None)


def setup_data(env: dict[str, str]) -> dict[str, Any]:
    """Users, tokens and sessions, written through the services like the API would."""
    code = r"""
import json, django
django.setup()
from rest_framework.authtoken.models import Token
from django.contrib.auth import get_user_model
from apps.context import services
from apps.context.services import EventInput
User = get_user_model()
owner = User.objects.create_user("bench_owner", password="x")
friends = [User.objects.create_user(f"bench_friend{i}", password="x") for i in range(3)]
read = services.session_create(owner=owner, title="read bench", metadata={"app": "bench"})
for i, f in enumerate(friends):
    services.participant_add(session=read, actor=owner, username=f.username, role="editor" if i else "viewer")
services.context_event_append(session=read, author=owner, events=[
    EventInput("context_update", {"text": f"paragraph {i} of the shared design document"}) for i in range(60)])
single = services.session_create(owner=owner, title="single appends")
batch = services.session_create(owner=owner, title="batch appends")
print(json.dumps({"token": Token.objects.create(user=owner).key, "read": str(read.pk),
                  "single": str(single.pk), "batch": str(batch.pk)}))
"""
    out = subprocess.run([PY, "-c", code], cwd=support.REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_closed(port: int, label: str, path: str, token: str | None, c: int, seconds: float) -> dict:
    r = run_load(
        mode="closed", port=port, method="GET", path=path, token=token, concurrency=c, duration=seconds, warmup=0.5
    )
    r["concurrency"] = c
    print(
        f"  {label:10s} c={c:3d}  {r['rps']:8.1f} req/s  p50 {r['p50']:6.2f} ms  p95 {r['p95']:6.2f} ms"
        f"  errors {r['errors']}"
    )
    return r


def sweep_pair(port: int, snapshot_path: str, token: str, levels: list[int], seconds: float) -> tuple[list, list]:
    """Bare view and snapshot at each concurrency level, back to back, so both
    see the same background load (the machine is shared)."""
    bare_rows, snap_rows = [], []
    for c in levels:
        bare_rows.append(measure_closed(port, "bare", "/bench/bare/", None, c, seconds))
        snap_rows.append(measure_closed(port, "snapshot", snapshot_path, token, c, seconds))
    return bare_rows, snap_rows


# --- the servers compared -------------------------------------------------------

BIN = Path(PY).parent
# Every candidate gets the same two processes (this machine has two CPUs).
WORKERS = "2"


def _uvicorn(port: int) -> list[str]:
    return support.uvicorn(
        "project.asgi:application", port=port, options=("--workers", WORKERS, "--http", "httptools", "--loop", "uvloop")
    )


def _granian(interface: str, app: str) -> Any:
    def command(port: int) -> list[str]:
        return [str(BIN / "granian"), "--interface", interface, "--workers", WORKERS, "--host", "127.0.0.1"] + [
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-ws",
            app,
        ]

    return command


def _gunicorn(*options: str) -> Any:
    def command(port: int) -> list[str]:
        return [str(BIN / "gunicorn"), "--workers", WORKERS, *options, "--bind", f"127.0.0.1:{port}"] + [
            "--log-level",
            "warning",
            "project.wsgi:application",
        ]

    return command


# name -> (command for a port, what it is)
SERVERS: dict[str, tuple[Any, str]] = {
    "uvicorn": (_uvicorn, "uvicorn, ASGI (`project.asgi`), httptools + uvloop, 2 workers"),
    "granian-asgi": (_granian("asgi", "project.asgi:application"), "granian, ASGI (`project.asgi`), 2 workers"),
    "gunicorn-sync": (_gunicorn("--worker-class", "sync"), "gunicorn, WSGI (`project.wsgi`), 2 sync workers"),
    "gunicorn-gthread": (
        _gunicorn("--worker-class", "gthread", "--threads", "4"),
        "gunicorn, WSGI (`project.wsgi`), 2 gthread workers x 4 threads",
    ),
    "granian-wsgi": (_granian("wsgi", "project.wsgi:application"), "granian, WSGI (`project.wsgi`), 2 workers"),
}
# What docker/entrypoint.sh runs for the `web` role (HTTP); `/ws/` goes to uvicorn (`web-ws`).
DEPLOYED = "gunicorn-gthread"


def measure_server(port: int, data: dict[str, Any], levels: list[int], phase: float) -> dict[str, Any]:
    token = data["token"]
    snapshot_path = f"/api/v1/sessions/{data['read']}/context/"
    bare_rows, snap_rows = sweep_pair(port, snapshot_path, token, levels, phase)
    bare_peak = max(bare_rows, key=lambda r: r["rps"])
    snap_peak = max(snap_rows, key=lambda r: r["rps"])
    open_rows = []
    for share in (0.3, 0.5, 0.7):
        rate = share * snap_peak["rps"]
        r = run_load(
            mode="open",
            port=port,
            method="GET",
            path=snapshot_path,
            token=token,
            rate=rate,
            duration=phase * 2.5,
            max_conns=64,
        )
        r["share"] = share
        open_rows.append(r)
        print(
            f"  snapshot open loop at {share:.0%} of peak ({rate:.0f} req/s): achieved {r['rps']:.1f} req/s"
            f"  p50 {r['p50']:.2f}  p95 {r['p95']:.2f}  p99 {r['p99']:.2f} ms  errors {r['errors']}"
        )
    single_body = json.dumps({"event_type": "context_update", "data": {"text": "one more line of context"}})
    single = run_load(
        mode="closed",
        port=port,
        method="POST",
        path=f"/api/v1/sessions/{data['single']}/events/",
        token=token,
        body=single_body,
        concurrency=8,
        duration=phase * 1.5,
        warmup=0.5,
    )
    print(
        f"  single appends: {single['rps']:.1f} events/s  p50 {single['p50']:.2f}  p95 {single['p95']:.2f}"
        f"  errors {single['errors']}"
    )
    return {
        "bare_rows": bare_rows,
        "snap_rows": snap_rows,
        "bare_peak": bare_peak,
        "snap_peak": snap_peak,
        "open_rows": open_rows,
        "at70": open_rows[-1],
        "single": single,
    }


def start_deployed(procs: support.Processes, env: dict[str, str]) -> int:
    """The production HTTP path: HAProxy (docker/haproxy.cfg) -> the deployed server; ``/ws/`` -> uvicorn."""
    http_port, ws_port, front, stats = (support.free_port() for _ in range(4))
    procs.start("deployed-http", SERVERS[DEPLOYED][0](http_port), env=env)
    procs.start("deployed-ws", support.uvicorn("project.asgi:application", port=ws_port), env=env)
    workdir = Path(procs.log_dir)
    haproxy_env = {
        **env,
        "HAPROXY_BIND": f"127.0.0.1:{front}",
        "HAPROXY_STATS_BIND": f"127.0.0.1:{stats}",
        "HAPROXY_SOCKET": str(workdir / "haproxy.sock"),
        "WEB1_ADDR": f"127.0.0.1:{http_port}",
        "WEB2_ADDR": f"127.0.0.1:{http_port}",
        "WS1_ADDR": f"127.0.0.1:{ws_port}",
        "WS2_ADDR": f"127.0.0.1:{ws_port}",
    }
    procs.start("haproxy", ["haproxy", "-db", "-f", str(support.REPO / "docker" / "haproxy.cfg")], env=haproxy_env)
    support.wait_http(f"http://127.0.0.1:{http_port}/bench/bare/")
    support.wait_http(f"http://127.0.0.1:{front}/bench/bare/")
    return front


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated candidates (default: all)")
    parser.add_argument("--loadgen")
    args = parser.parse_args()
    if args.loadgen:
        loadgen_main(json.loads(args.loadgen))
        return

    phase = 1.5 if args.quick else 3.0
    levels = [1, 8, 32] if args.quick else [1, 4, 16, 32]
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if "uvicorn" not in names:
        names.insert(0, "uvicorn")  # the baseline every ratio is against
    env = bench_env()
    load_before = os.getloadavg()
    print(f"database {BENCH.name}, redis prefix {BENCH.name}; loadavg before {load_before}")
    BENCH.setup(vhost=False, migrate=True)
    procs = support.Processes()
    servers: dict[str, dict[str, Any]] = {}
    try:
        data = setup_data(env)
        for name in names:
            command, _ = SERVERS[name]
            port = support.free_port()
            print(f"== {name}: {SERVERS[name][1]}")
            procs.start(name, command(port), env=env)
            support.wait_http(f"http://127.0.0.1:{port}/bench/bare/")
            servers[name] = measure_server(port, data, levels, phase)
            procs.stop(name)

        print(f"== as deployed: HAProxy -> {DEPLOYED} (HTTP), uvicorn (/ws/)")
        front = start_deployed(procs, env)
        deployed = measure_server(front, data, levels, phase)
        batch_body = json.dumps(
            {"events": [{"event_type": "context_update", "data": {"text": f"line {i}"}} for i in range(100)]}
        )
        batch = run_load(
            mode="closed",
            port=front,
            method="POST",
            path=f"/api/v1/sessions/{data['batch']}/events/",
            token=data["token"],
            body=batch_body,
            concurrency=4,
            duration=phase * 1.5,
            warmup=0.5,
        )
        print(f"  batch100: {batch['rps'] * 100:.0f} events/s  p50 {batch['p50']:.2f}  errors {batch['errors']}")
    finally:
        procs.stop_all()
        BENCH.teardown(vhost=False)

    base = servers["uvicorn"]
    fastest = max(servers, key=lambda n: servers[n]["snap_peak"]["rps"])
    ratio_uvicorn = deployed["snap_peak"]["rps"] / base["snap_peak"]["rps"]
    ratio_bare = deployed["snap_peak"]["rps"] / deployed["bare_peak"]["rps"]
    single_eps, batch_eps = deployed["single"]["rps"], batch["rps"] * 100
    batch_ratio = batch_eps / single_eps if single_eps else float("inf")
    at70 = deployed["at70"]
    goals = {
        "snapshot peak as deployed >= 5x uvicorn's": ratio_uvicorn >= 5,
        "snapshot peak >= 0.6x bare view (as deployed)": ratio_bare >= 0.6,
        "snapshot p95 < 50 ms at 70% of peak (as deployed)": at70["p95"] < 50,
        "batch append >= 10x single events/s": batch_ratio >= 10,
    }
    print(f"\nfastest snapshot server: {fastest}; as deployed {ratio_uvicorn:.2f}x uvicorn, {ratio_bare:.2f}x bare")
    for goal, met in goals.items():
        print(f"  {'MET ' if met else 'MISSED'}  {goal}")
    write_results(locals())


def write_results(v: dict[str, Any]) -> None:
    def row(name: str, r: dict, extra: str = "") -> str:
        return (
            f"| {name} | {r.get('concurrency', '-')} | {r['rps']:.1f} | {r['p50']:.2f} | {r['p95']:.2f} | "
            f"{r['p99']:.2f} | {r['errors']} | {extra} |"
        )

    servers, deployed, base, goals = v["servers"], v["deployed"], v["base"], v["goals"]

    def side(name: str, label: str, m: dict[str, Any]) -> str:
        snap, bare = m["snap_peak"]["rps"], m["bare_peak"]["rps"]
        return (
            f"| {label} | {bare:.0f} | {snap:.0f} | {snap / base['snap_peak']['rps']:.2f}x | {snap / bare:.2f}x | "
            f"{m['at70']['p95']:.1f} | {m['single']['rps']:.0f} | {m['single']['p50']:.1f} | {errors(m)} |"
        )

    def errors(m: dict[str, Any]) -> int:
        rows = [*m["bare_rows"], *m["snap_rows"], *m["open_rows"], m["single"]]
        return sum(r["errors"] for r in rows)

    results = [
        f"{deployed['snap_peak']['rps']:.0f} / {base['snap_peak']['rps']:.0f} req/s = {v['ratio_uvicorn']:.2f}x",
        f"{deployed['snap_peak']['rps']:.0f} / {deployed['bare_peak']['rps']:.0f} req/s = {v['ratio_bare']:.2f}x",
        f"p95 {v['at70']['p95']:.2f} ms at {v['at70']['rps']:.0f} req/s",
        f"{v['batch_eps']:.0f} / {v['single_eps']:.0f} events/s = {v['batch_ratio']:.1f}x",
    ]
    lines = [
        "# REST API benchmark: the candidate servers side by side, then the path as deployed",
        "",
        f"Command: `.venv/bin/python bench/api.py{' --quick' if v['args'].quick else ''}`  ",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
        f"Machine: {support.cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average before the run {tuple(round(x, 2) for x in v['load_before'])} (the machine is shared "
        "with other engineers' test runs, so absolute figures are noisy; the ratios are measured in one run).  ",
        "Settings `bench._lib.api_settings` (production middleware, token auth, throttles on), dedicated database "
        "`bench_api`. Every server gets 2 worker processes. Load generator: a separate process, asyncio raw "
        "HTTP/1.1 client (keep-alive where the server offers it; a server that closes is reconnected, and the "
        "reconnect counts in the latency).",
        "",
        "## Goals",
        "",
        "| goal | result | met |",
        "|---|---|---|",
        *[
            f"| {goal} | {shown} | {'yes' if goals[goal] else 'NO'} |"
            for goal, shown in zip(goals, results, strict=True)
        ],
        "",
        "## The servers side by side (peaks over the concurrency sweep; req/s, latency in ms)",
        "",
        "| server | bare view | snapshot | snapshot vs uvicorn | snapshot vs bare | snapshot p95 at 70% | "
        "single appends/s | append p50 | errors (4xx/5xx) |",
        "|---|---|---|---|---|---|---|---|---|",
        *[side(name, f"{name}: {SERVERS[name][1]}", servers[name]) for name in servers],
        side("deployed", f"**as deployed**: HAProxy -> {DEPLOYED}, `/ws/` -> uvicorn", deployed),
        "",
        f"Fastest snapshot read in this run: **{v['fastest']}**. The web role runs {DEPLOYED} "
        "(docker/entrypoint.sh), WebSockets stay on uvicorn (`web-ws`), HAProxy sends `/ws/` there.",
        "",
        "## As deployed: concurrency sweep (closed loop, latency in ms)",
        "",
        "| endpoint | concurrency | req/s | p50 | p95 | p99 | errors | |",
        "|---|---|---|---|---|---|---|---|",
        *[row("bare `JsonResponse`", r, "peak" if r is deployed["bare_peak"] else "") for r in deployed["bare_rows"]],
        *[row("`GET .../context/`", r, "peak" if r is deployed["snap_peak"] else "") for r in deployed["snap_rows"]],
        "",
        "## As deployed: snapshot at a fixed rate (open loop, latency in ms from the scheduled send)",
        "",
        "| share of peak | target req/s | achieved req/s | p50 | p95 | p99 | errors |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['share']:.0%} | {r['target_rate']:.0f} | {r['rps']:.1f} | {r['p50']:.2f} | {r['p95']:.2f} | "
            f"{r['p99']:.2f} | {r['errors']} |"
            for r in deployed["open_rows"]
        ],
        "",
        "## As deployed: event appends (closed loop, one session each)",
        "",
        "| kind | concurrency | req/s | events/s | p50 | p95 | p99 | errors |",
        "|---|---|---|---|---|---|---|---|",
        f"| single event | 8 | {deployed['single']['rps']:.1f} | {v['single_eps']:.0f} | "
        f"{deployed['single']['p50']:.2f} | {deployed['single']['p95']:.2f} | {deployed['single']['p99']:.2f} | "
        f"{deployed['single']['errors']} |",
        f"| batch of 100 | 4 | {v['batch']['rps']:.1f} | {v['batch_eps']:.0f} | {v['batch']['p50']:.2f} | "
        f"{v['batch']['p95']:.2f} | {v['batch']['p99']:.2f} | {v['batch']['errors']} |",
        "",
        "## What limits these figures",
        "",
        f"- {os.cpu_count()} CPUs shared with other engineers' work (load average {v['load_before'][0]:.1f} when "
        "this run started), and the load generator runs on the same CPUs as the server.",
        "- Under ASGI, Django runs each sync view through `sync_to_async` on a thread and back: that hop, "
        "not the server's HTTP parser, is most of the cost, which is why ASGI servers land close to each other "
        "and the WSGI servers far above them.",
        "- Appends serialise per session on the session row lock (gap-free seq), and each commit also writes the "
        "outbox rows and broadcasts after commit; a batch pays that once for 100 events.",
        "",
    ]
    support.write_results("api", "\n".join(lines))


if __name__ == "__main__":
    main()
