"""The REST append in-process: p50/p95 of one ``POST /api/v1/sessions/{id}/events/``, baseline and now.

Run (from the repository root, with PostgreSQL and Redis up):

    .venv/bin/python bench/append.py                 # ~2 minutes; writes bench/results/append.md
    .venv/bin/python bench/append.py --requests 200  # fewer timed requests per scenario

What it does:

1. Exports the baseline commit (``BASELINE``, the code before the hot-path work;
   ``--baseline`` names another) with ``git archive`` into a temporary folder;
   the working tree is "now".
2. For each of the two trees, a dedicated database (``bench_append_base``,
   ``bench_append_now``, migrated by that tree) and Redis prefix, and one worker
   process running that tree's code with ``bench._lib.api_settings`` (production
   middleware, token auth, throttles on at rates the run never reaches).
3. Each worker drives the full Django stack in-process with the test client
   (``django.test.Client``: URL routing, every middleware, DRF auth, throttles,
   the view, the after-commit broadcast through the channel layer, which is
   Redis pub/sub): no HTTP server, no socket between client and view.
4. The timed requests are split into rounds, and the two workers take turns
   round by round, so both see the same background load (the machine is shared).
   Scenarios: a plain single event; one with a ``client_msg_id``; one with an
   ``Idempotency-Key`` header (a fresh key per request).
5. Then, untimed, a profile of each tree: every SQL statement (count and time
   per append, through ``connection.execute_wrapper``; the outbox's ``COPY``
   through psycopg's ``Cursor.copy``), the commit, Redis round trips on the
   request thread (by command), the after-commit hooks and the broadcast in them.
6. Writes ``bench/results/append.md``.

Goal (issue 17, the hot path): p50 <= 10 ms in-process for a single append.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # bench/ first on sys.path would let bench/queue.py shadow the stdlib's queue
    _root = Path(__file__).resolve().parents[1]
    if "--worker" in sys.argv:  # a worker runs the tree it is given (the baseline's or this one)
        _root = Path(sys.argv[sys.argv.index("--worker") + 1]).resolve()
    sys.path[:] = [str(_root), *sys.path[1:]]

# The code before the hot-path work on the append (issue 17).
BASELINE = "ac43c61"
GOAL_P50_MS = 10.0
SCENARIOS = ("plain", "client_msg_id", "idempotency_key")
PG = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/context_engine").rsplit("/", 1)[0]


# --- the worker (one per tree, in its own process) -----------------------------


class Worker:
    def __init__(self) -> None:
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.test import Client
        from rest_framework.authtoken.models import Token

        from apps.context import services

        user = get_user_model().objects.create_user("bench_append", password="x")  # noqa: S106 - a throwaway user
        self.session = services.session_create(owner=user, title="append bench")
        token = Token.objects.create(user=user).key
        self.client = Client(HTTP_AUTHORIZATION=f"Token {token}", HTTP_HOST="localhost")
        self.path = f"/api/v1/sessions/{self.session.pk}/events/"
        self.counter = 0
        self.errors = 0

    def one(self, scenario: str) -> float:
        self.counter += 1
        body: dict[str, Any] = {"event_type": "context_update", "data": {"text": f"line {self.counter} of context"}}
        headers: dict[str, str] = {}
        if scenario == "client_msg_id":
            body["client_msg_id"] = f"m-{os.getpid()}-{self.counter}"
        elif scenario == "idempotency_key":
            headers["HTTP_IDEMPOTENCY_KEY"] = f"k-{os.getpid()}-{self.counter}"
        payload = json.dumps(body)
        t0 = time.perf_counter()
        response = self.client.post(self.path, data=payload, content_type="application/json", **headers)
        elapsed = time.perf_counter() - t0
        if response.status_code != 201:
            self.errors += 1
            if self.errors <= 3:
                print(f"append answered {response.status_code}: {response.content[:300]!r}", file=sys.stderr)
        return elapsed

    def run(self, scenario: str, n: int) -> dict[str, Any]:
        return {"latencies": [self.one(scenario) for _ in range(n)], "errors": self.errors}

    def profile(self, scenario: str, n: int) -> dict[str, Any]:
        with Profiler() as prof:
            for _ in range(n):
                prof.start_request()
                self.one(scenario)
                prof.end_request()
        return prof.summary(n)


class Profiler:
    """Per-phase times of the requests between start_request and end_request (this thread only)."""

    def __init__(self) -> None:
        self.queries: dict[str, list[float]] = {}
        self.redis: dict[str, list[float]] = {}
        self.phases: dict[str, list[float]] = {}
        self.totals: list[float] = []
        self._undo: list[Any] = []
        self._t0 = 0.0

    def _add(self, bucket: dict[str, list[float]], key: str, seconds: float) -> None:
        bucket.setdefault(key, []).append(seconds)

    def start_request(self) -> None:
        self._t0 = time.perf_counter()

    def end_request(self) -> None:
        self.totals.append(time.perf_counter() - self._t0)

    def __enter__(self) -> Profiler:
        import threading
        from contextlib import contextmanager

        import psycopg
        import redis
        from django.db import connections

        from apps.context.hooks import hooks

        connection = connections["default"]

        me = threading.get_ident()
        prof = self

        def sql_wrapper(execute, sql, params, many, context):  # noqa: ANN001, ANN202
            t0 = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                prof._add(prof.queries, _label(sql), time.perf_counter() - t0)

        self._wrapper_cm = connection.execute_wrapper(sql_wrapper)
        self._wrapper_cm.__enter__()

        def patch(owner: Any, name: str, make: Any) -> None:
            original = getattr(owner, name)
            self._undo.append((owner, name, original, isinstance(owner, type) or name in vars(owner)))
            setattr(owner, name, make(original))

        def timed(bucket: str, label: str) -> Any:
            def make(original: Any) -> Any:
                def wrapped(*args: Any, **kwargs: Any) -> Any:
                    t0 = time.perf_counter()
                    try:
                        return original(*args, **kwargs)
                    finally:
                        prof._add(getattr(prof, bucket), label, time.perf_counter() - t0)

                return wrapped

            return make

        def copy_make(original: Any) -> Any:
            @contextmanager
            def copy(cursor: Any, statement: Any, *args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                with original(cursor, statement, *args, **kwargs) as c:
                    yield c
                prof._add(prof.queries, _label(str(statement)), time.perf_counter() - t0)

            return copy

        patch(psycopg.Cursor, "copy", copy_make)
        patch(connection, "_commit", timed("queries", "COMMIT"))
        patch(connection, "run_and_clear_commit_hooks", timed("phases", "after-commit hooks (total)"))
        if hooks.events_appended is not None:
            patch(hooks, "events_appended", timed("phases", "broadcast (in the hooks)"))

        def redis_cmd(original: Any) -> Any:
            def execute_command(client: Any, *args: Any, **options: Any) -> Any:
                if threading.get_ident() != me or isinstance(client, redis.client.Pipeline):
                    return original(client, *args, **options)
                t0 = time.perf_counter()
                try:
                    return original(client, *args, **options)
                finally:
                    prof._add(prof.redis, str(args[0]).upper(), time.perf_counter() - t0)

            return execute_command

        def redis_pipe(original: Any) -> Any:
            def execute(pipe: Any, *args: Any, **kwargs: Any) -> Any:
                names = "+".join(sorted({str(c[0][0]).upper() for c in pipe.command_stack})) or "empty"
                t0 = time.perf_counter()
                try:
                    return original(pipe, *args, **kwargs)
                finally:
                    if threading.get_ident() == me:
                        prof._add(prof.redis, f"pipeline({names})", time.perf_counter() - t0)

            return execute

        patch(redis.client.Redis, "execute_command", redis_cmd)
        patch(redis.client.Pipeline, "execute", redis_pipe)
        return self

    def __exit__(self, *exc: object) -> None:
        self._wrapper_cm.__exit__(None, None, None)
        for owner, name, original, own in reversed(self._undo):
            if own:
                setattr(owner, name, original)
            else:  # a method patched on an instance: the class's comes back
                delattr(owner, name)

    def summary(self, n: int) -> dict[str, Any]:
        def rows(bucket: dict[str, list[float]]) -> list[dict[str, Any]]:
            out = [
                {
                    "what": k,
                    "per_append": len(v) / n,
                    "ms_each": 1000 * sum(v) / len(v),
                    "ms_per_append": 1000 * sum(v) / n,
                }
                for k, v in bucket.items()
            ]
            return sorted(out, key=lambda r: -r["ms_per_append"])

        return {
            "n": n,
            "total_ms": 1000 * sum(self.totals) / n,
            "p50_ms": 1000 * _percentile(self.totals, 0.5),
            "queries": rows(self.queries),
            "redis": rows(self.redis),
            "phases": rows(self.phases),
        }


def _label(sql: str) -> str:
    """A statement, shortened: its first 110 characters, whitespace collapsed."""
    text = re.sub(r'"s\d+_x\d+"', '"<savepoint>"', " ".join(sql.split()))
    return text if len(text) <= 110 else text[:107] + "..."


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def worker_main() -> None:
    worker = Worker()
    for scenario in SCENARIOS:  # warm-up: imports, caches, connections, the send loop
        worker.run(scenario, 20)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "run":
            result = worker.run(command["scenario"], command["n"])
        elif command["cmd"] == "profile":
            result = worker.profile(command["scenario"], command["n"])
        else:
            break
        print(json.dumps(result), flush=True)


# --- orchestration ---------------------------------------------------------------


class Tree:
    """One tree's worker: its database, Redis prefix and process."""

    def __init__(self, label: str, root: Path) -> None:
        from bench._lib import support

        self.label, self.root = label, root
        self.res = support.Resources(f"bench_append_{label}", pg=PG, settings="bench._lib.api_settings")
        env = self.res.env(DEBUG=None, BROKER_URL=None, LOG_LEVEL=None, PYTHONPATH=str(root))
        self.res.setup(vhost=False)
        subprocess.run([support.PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=root, env=env, check=True)
        self.proc = subprocess.Popen(
            [support.PY, str(Path(__file__).resolve()), "--worker", str(root)],
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()  # ready

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise RuntimeError(f"the {self.label} worker exited ({self.proc.wait()})")
        return json.loads(line)

    def ask(self, **command: Any) -> dict[str, Any]:
        if self.proc.stdin is None:
            raise RuntimeError("no pipe to the worker")
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError, ValueError):
                self.ask(cmd="quit")
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.res.teardown(vhost=False)


def export_baseline(commit: str, into: Path) -> str:
    repo = Path(__file__).resolve().parents[1]
    full = subprocess.run(["git", "rev-parse", commit], cwd=repo, capture_output=True, text=True, check=True)
    archive = subprocess.Popen(["git", "archive", commit], cwd=repo, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    return full.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300, help="timed appends per scenario and tree")
    parser.add_argument("--rounds", type=int, default=20, help="turns the trees take")
    parser.add_argument("--profile", type=int, default=100, help="profiled appends per scenario and tree")
    parser.add_argument("--baseline", default=BASELINE)
    args = parser.parse_args()
    from bench._lib import support

    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "apps"], cwd=repo, capture_output=True, text=True)
    load_before = os.getloadavg()
    print(f"loadavg before {load_before}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-append-base-") as tmp:
        baseline_full = export_baseline(args.baseline, Path(tmp))
        trees: dict[str, Tree] = {}
        try:
            trees["base"] = Tree("base", Path(tmp))
            trees["now"] = Tree("now", repo)
            per_round = max(1, args.requests // args.rounds)
            lat: dict[tuple[str, str], list[float]] = {(n, sc): [] for n in trees for sc in SCENARIOS}
            errors: dict[str, int] = {}
            # Round by round, every scenario, the trees taking turns (who goes first alternates):
            # each figure is spread over the whole run and sees the same background load.
            for r in range(args.rounds):
                for scenario in SCENARIOS:
                    order = list(trees) if r % 2 == 0 else list(reversed(trees))
                    for name in order:
                        out = trees[name].ask(cmd="run", scenario=scenario, n=per_round)
                        lat[name, scenario] += out["latencies"]
                        errors[name] = out["errors"]
            for scenario in SCENARIOS:
                for name in trees:
                    ms = [x * 1000 for x in lat[name, scenario]]
                    s = results.setdefault(name, {})[scenario] = {
                        "n": len(ms),
                        "p50": support.percentile(ms, 0.5),
                        "p95": support.percentile(ms, 0.95),
                        "p99": support.percentile(ms, 0.99),
                        "errors": errors[name],
                    }
                    print(f"{scenario:16s} {name:5s} p50 {s['p50']:6.2f} ms  p95 {s['p95']:6.2f} ms")
            for name, tree in trees.items():
                for scenario in SCENARIOS:
                    results[name][f"profile_{scenario}"] = tree.ask(cmd="profile", scenario=scenario, n=args.profile)
        finally:
            for tree in trees.values():
                tree.close()
    load_after = os.getloadavg()
    write(args, results, baseline_full, head.strip(), bool(dirty.stdout.strip()), load_before, load_after)


def _options(args: argparse.Namespace) -> str:
    defaults = {"requests": 300, "rounds": 20, "profile": 100, "baseline": BASELINE}
    return "".join(f" --{k} {getattr(args, k)}" for k, v in defaults.items() if getattr(args, k) != v)


def write(
    args: argparse.Namespace,
    results: dict[str, Any],
    baseline: str,
    head: str,
    dirty: bool,
    load_before: tuple[float, ...],
    load_after: tuple[float, ...],
) -> None:
    from bench._lib import support

    base, now = results["base"], results["now"]
    met = now["plain"]["p50"] <= GOAL_P50_MS
    lines = [
        "# The REST append in-process: baseline and now",
        "",
        f"Command: `.venv/bin/python bench/append.py{_options(args)}`  ",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
        f"Baseline: `{baseline[:12]}` (exported with `git archive`); now: `{head}`"
        f"{' plus uncommitted changes under apps/' if dirty else ''}.  ",
        f"Machine: {support.cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; load average "
        f"{tuple(round(x, 2) for x in load_before)} before, {tuple(round(x, 2) for x in load_after)} after "
        "(shared with other engineers' work: absolute figures are noisy, the two trees take turns in "
        f"{args.rounds} rounds so both see the same load).  ",
        "In-process: `django.test.Client` through every middleware, token auth, throttles (`bench._lib.api_settings`), "
        "the view, PostgreSQL and Redis on this machine, and the after-commit broadcast (channel layer, Redis pub/sub) "
        "included; no HTTP server. One session, one author, one event per request.",
        "",
        "## Latency (ms)",
        "",
        f"Goal: p50 <= {GOAL_P50_MS:g} ms for a plain single append: **{'met' if met else 'NOT met'}** "
        f"({now['plain']['p50']:.2f} ms).",
        "",
        "| scenario | baseline p50 | baseline p95 | now p50 | now p95 | now p99 | p50 speed-up | requests each | "
        "errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        b, n = base[scenario], now[scenario]
        lines.append(
            f"| {scenario} | {b['p50']:.2f} | {b['p95']:.2f} | {n['p50']:.2f} | {n['p95']:.2f} | {n['p99']:.2f} | "
            f"{b['p50'] / n['p50']:.2f}x | {n['n']} | {b['errors']} / {n['errors']} |"
        )
    lines += ["", "## Round trips per append", ""]
    lines += [
        "| scenario | baseline SQL (incl. COMMIT) | now SQL | baseline Redis | now Redis |",
        "|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        pb, pn = base[f"profile_{scenario}"], now[f"profile_{scenario}"]

        def count(p: dict[str, Any], key: str) -> float:
            return sum(r["per_append"] for r in p[key])

        lines.append(
            f"| {scenario} | {count(pb, 'queries'):.1f} | {count(pn, 'queries'):.1f} | "
            f"{count(pb, 'redis'):.2f} | {count(pn, 'redis'):.2f} |"
        )
    for label, tree in (("Baseline", base), ("Now", now)):
        for scenario in SCENARIOS:
            p = tree[f"profile_{scenario}"]
            lines += [
                "",
                f"## {label}, {scenario}: profile of {p['n']} appends (mean {p['total_ms']:.2f} ms, p50 "
                f"{p['p50_ms']:.2f} ms while profiled)",
                "",
                "| kind | what | per append | ms each | ms per append |",
                "|---|---|---|---|---|",
            ]
            accounted = 0.0
            for kind in ("queries", "redis", "phases"):
                for r in p[kind]:
                    if kind != "phases" or r["what"].startswith("broadcast"):
                        accounted += r["ms_per_append"]
                    what = r["what"].replace("|", "\\|")
                    lines.append(
                        f"| {kind} | `{what}` | {r['per_append']:.2f} | {r['ms_each']:.3f} | {r['ms_per_append']:.3f} |"
                    )
            lines.append(
                f"| rest | Python outside SQL, Redis calls and the broadcast (middleware, auth and the "
                f"participant check from the in-process cache, DRF parsing and serializers, the service) | | | "
                f"{p['total_ms'] - accounted:.3f} |"
            )
    p = now["profile_plain"]
    sql = sum(r["ms_per_append"] for r in p["queries"])
    commit = sum(r["ms_per_append"] for r in p["queries"] if r["what"] == "COMMIT")
    rds = sum(r["ms_per_append"] for r in p["redis"])
    push = sum(r["ms_per_append"] for r in p["phases"] if r["what"].startswith("broadcast"))
    rest = p["total_ms"] - sql - rds - push
    lines += [
        "",
        "## What limits it now",
        "",
        f"Of the plain append's {p['total_ms']:.2f} ms (mean, profiled): SQL {sql:.2f} ms "
        f"({sum(r['per_append'] for r in p['queries']):.0f} round trips: the lock-check-insert statement, the outbox "
        f"`COPY`, the `COMMIT` at {commit:.2f} ms, which waits for the WAL flush), Redis {rds:.2f} ms (the "
        f"stored-event quota before the transaction, one cache invalidation after it), the broadcast {push:.2f} ms, "
        f"and {rest:.2f} ms of Python (middleware, DRF, serializers, the service). What is left is one round trip "
        "per guarantee: the row lock and seq (the statement), the outbox row in the same transaction (`COPY`: its "
        "rows carry the seq, so they cannot be sent before the statement answers), durability (`COMMIT`), the "
        "quota (before any write), the invalidation that must precede the broadcast, and the broadcast itself. "
        "Under load every round trip waits for a CPU: the p95 is the machine's, not the code's.",
    ]
    lines += [
        "",
        "Reading the profiles: `queries` are SQL statements on the request's connection (`COPY` is the outbox row, "
        "`COMMIT` the commit); `redis` are round trips on the request thread (`EVALSHA` alone: the stored-event "
        "quota; `pipeline(EVALSHA...)`: a cache invalidation (`+PUBLISH` on the baseline, whose invalidation also "
        "published on the bus); `pipeline(INCRBY+SET)`: a throttle report, about one request in a hundred at these "
        "rates); `broadcast` is the sync channel-layer send on the shared per-process loop (its PUBLISH runs on "
        "the loop's thread, the request waits for it). `after-commit hooks (total)` is Django's run of on_commit "
        "callbacks at the commit: on the baseline the second invalidation pass and the broadcast; now the append "
        "commits first and then invalidates and broadcasts itself (on_commit outside a transaction runs at once), "
        "so that row is near zero and the work shows in the `redis` and `broadcast` rows instead. Lock wait: one "
        "session and one client, so the session row lock is never contended here; it costs what the statement "
        "that takes it costs (the `FOR UPDATE` / `UPDATE context_session` rows). Profiled runs are untimed "
        "(the wrappers cost time) and come after the timed rounds.",
        "",
    ]
    support.write_results("append", "\n".join(lines))


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker_main()
    else:
        main()
