"""Load balancing through HAProxy during a rolling restart of the web instances.

Run (from the repository root, with the shared services up):

    .venv/bin/python bench/lb.py [--threads 8] [--steady 10]

Two real uvicorn instances (``project.asgi``) behind the Debian HAProxy running
the repository's ``docker/haproxy.cfg`` on loopback free ports. Client threads
send ``GET /healthz`` (answers which instance served it) without pause through
three phases, all in this one run:

1. ``steady`` (baseline): no restart;
2. ``rolling, drain``: for each instance in turn: ``set server ... state drain``
   on HAProxy's admin socket, wait for its open requests to finish, SIGTERM
   (uvicorn's graceful shutdown), start it again, wait until HAProxy's health
   check sees it ready, ``state ready``;
3. ``rolling, SIGTERM only``: the same without the drain step (HAProxy's
   retries and redispatch alone keep requests from failing).

For each phase: requests, failed requests, throughput, p50/p99 latency and
each instance's share. Isolation: a database ``bench_lb`` (readiness needs a
reachable PostgreSQL database), vhost ``bench_lb`` and Redis prefix
``bench_lb``, created here and dropped at the end. Writes ``bench/results/lb.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

if __name__ == "__main__":  # bench/ first on sys.path would let bench/queue.py shadow the stdlib's queue
    sys.path[:] = [str(Path(__file__).resolve().parents[1]), *sys.path[1:]]

import httpx

from bench._lib import support
from tests.support.haproxy import HAProxy, WebInstance

# Readiness needs a reachable (not a migrated) database.
BENCH = support.Resources("bench_lb")


class Load:
    def __init__(self, url: str, threads: int) -> None:
        self.url, self.threads = url, threads
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.phase = "warmup"
        self.records: dict[str, list[tuple[float, str | None, bool]]] = {}
        self.errors: dict[str, list[str]] = {}
        self.workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=15) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                who, ok, error = None, False, ""
                try:
                    response = client.get("/healthz")
                    ok = response.status_code == 200
                    who = response.json().get("instance") if ok else None
                    error = "" if ok else f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    error = f"{exc.__class__.__name__}: {exc}"
                elapsed = time.perf_counter() - started
                with self.lock:
                    self.records.setdefault(self.phase, []).append((elapsed, who, ok))
                    if error:
                        self.errors.setdefault(self.phase, []).append(error)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def finish(self) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(timeout=30)


def _wait_idle(proxy: HAProxy, server: str, timeout: float = 15.0) -> None:
    """Until HAProxy has no request in progress on ``server`` (``scur`` is 0)."""

    def idle() -> bool:
        text = proxy.command("show stat")
        header = text.splitlines()[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in text.splitlines()[1:]]
        return any(r.get("pxname") == "web" and r.get("svname") == server and r.get("scur") == "0" for r in rows)

    # Stopped anyway after the timeout: uvicorn's graceful shutdown lets the last requests finish.
    with contextlib.suppress(TimeoutError):
        support.wait_until(idle, timeout=timeout, what=f"{server} idle")


def _rolling(proxy: HAProxy, webs: list[WebInstance], *, drain: bool) -> None:
    for web in webs:
        if drain:
            proxy.command(f"set server web/{web.name} state drain")
            _wait_idle(proxy, web.name)
        web.stop()
        web.start()
        if drain:
            proxy.command(f"set server web/{web.name} state ready")
        proxy.wait_status(web.name, "UP", timeout=60)
        time.sleep(1.0)


def _summary(records: list[tuple[float, str | None, bool]], errors: list[str], seconds: float) -> dict:
    latencies = sorted(r[0] for r in records)
    served = Counter(r[1] for r in records if r[1])
    total = len(records)
    return {
        "requests": total,
        "failed": sum(1 for r in records if not r[2]),
        "rps": total / seconds if seconds else 0.0,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "p99_ms": support.percentile(latencies, 0.99) * 1000 if latencies else 0.0,
        "share": {k: v / max(1, sum(served.values())) for k, v in sorted(served.items())},
        "errors": Counter(e.split(":")[0] for e in errors).most_common(3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--steady", type=float, default=10.0, help="seconds of the steady baseline phase")
    args = parser.parse_args()

    BENCH.setup()
    env = BENCH.env()
    webs = [WebInstance(name="web1", env=env), WebInstance(name="web2", env=env)]
    proxy = HAProxy(backends=webs)
    phases: list[tuple[str, float]] = []
    try:
        for web in webs:
            web.start()
        proxy.start()
        proxy.wait_status("web1", "UP")
        proxy.wait_status("web2", "UP")
        load = Load(proxy.url, args.threads)
        load.start()
        time.sleep(1.0)
        for phase, action in (
            ("steady (baseline)", lambda: time.sleep(args.steady)),
            ("rolling restart, drain + SIGTERM", lambda: _rolling(proxy, webs, drain=True)),
            ("rolling restart, SIGTERM only", lambda: _rolling(proxy, webs, drain=False)),
        ):
            load.phase = phase
            started = time.monotonic()
            action()
            phases.append((phase, time.monotonic() - started))
        load.finish()
    finally:
        proxy.stop()
        for web in webs:
            web.stop()
        BENCH.teardown()

    rows = []
    for phase, seconds in phases:
        s = _summary(load.records.get(phase, []), load.errors.get(phase, []), seconds)
        rows.append((phase, seconds, s))
        share = ", ".join(f"{k} {v:.1%}" for k, v in s["share"].items())
        print(
            f"{phase:36s} {seconds:5.1f}s  requests {s['requests']:6d}  failed {s['failed']:3d}  "
            f"{s['rps']:7.1f} req/s  p50 {s['p50_ms']:6.1f} ms  p99 {s['p99_ms']:7.1f} ms  share: {share}"
        )

    lines = [
        "# Load balancing through HAProxy during a rolling restart",
        "",
        f"Command: `.venv/bin/python bench/lb.py --threads {args.threads} --steady {args.steady:g}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{subprocess.run(['haproxy', '-v'], capture_output=True, text=True).stdout.splitlines()[0]}",
        "",
        f"{args.threads} client threads send `GET /healthz` without pause through HAProxy (docker/haproxy.cfg) to two "
        "uvicorn instances; the CPUs are shared by the clients, HAProxy, both instances and everything else on the "
        "machine, so absolute throughput is low; the figures that matter are failures and shares.",
        "",
        "| phase | seconds | requests | failed | req/s | p50 ms | p99 ms | share per instance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase, seconds, s in rows:
        share = ", ".join(f"{k} {v:.1%}" for k, v in s["share"].items())
        lines.append(
            f"| {phase} | {seconds:.1f} | {s['requests']} | {s['failed']} | {s['rps']:.1f} | "
            f"{s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {share} |"
        )
    baseline = rows[0][2]
    lines += ["", "Ratios against the steady baseline:"]
    for phase, _seconds, s in rows[1:]:
        ratio = s["rps"] / baseline["rps"] if baseline["rps"] else 0.0
        p99 = s["p99_ms"] / baseline["p99_ms"] if baseline["p99_ms"] else 0.0
        lines.append(
            f"- {phase}: throughput x{ratio:.2f}, p99 latency x{p99:.2f}, failed {s['failed']}"
            + (f" ({s['errors']})" if s["errors"] else "")
        )
    lines += [
        "",
        "During a rolling restart one instance is down at a time, so its share drops while it restarts; the "
        "steady phase shows the round-robin split. Zero failures come from: uvicorn's graceful shutdown "
        "(in-flight requests finish), HAProxy `retry-on conn-failure empty-response ...` with `option redispatch` "
        "(a refused connection is retried on the other server), `/readyz` health checks every second (a restarted "
        "instance gets traffic only once ready), and, in the drain phase, no new requests to an instance about "
        "to stop.",
    ]
    support.write_results("lb", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
