"""One setup helper for every benchmark, as ``tests/support/`` is for the tests.

A benchmark names its own PostgreSQL database, RabbitMQ vhost and Redis key
prefix (``Resources``, all three called ``bench_<name>``), builds its child
processes' environment from it, starts them with ``Processes``, waits with
``wait_until``/``wait_http``, summarises with ``percentile`` and writes its
figures with ``write_results``.

Each script starts with the same two lines before importing this module
(``python bench/x.py`` puts ``bench/`` first on ``sys.path``, where
``bench/queue.py`` would shadow the standard library's ``queue``)::

    if __name__ == "__main__":
        sys.path[:] = [str(Path(__file__).resolve().parents[1])] + sys.path[1:]
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.services import free_port

__all__ = [
    "LOCAL_AMQP",
    "LOCAL_PG",
    "PY",
    "REPO",
    "Processes",
    "Resources",
    "celery_worker",
    "cpu_model",
    "django_setup",
    "free_port",
    "manage",
    "percentile",
    "rabbitmqctl",
    "uvicorn",
    "wait_http",
    "wait_until",
    "write_results",
]

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
LOCAL_PG = "postgres://postgres@127.0.0.1:5432"
LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


# --- the benchmark's own database, vhost and Redis prefix ------------------------


def rabbitmqctl(*args: str, check: bool = True) -> str:
    return subprocess.run(["rabbitmqctl", *args], check=check, capture_output=True, text=True, timeout=120).stdout


@dataclass(frozen=True)
class Resources:
    """A database, a vhost and a Redis key prefix, all named ``name``, made and dropped here."""

    name: str
    pg: str = LOCAL_PG  # server URL, without a database
    amqp: str = LOCAL_AMQP  # broker URL, without a vhost
    redis_url: str = field(default_factory=lambda: os.environ.get("REDIS_URL", LOCAL_REDIS))
    settings: str = "project.settings.dev"  # the children's DJANGO_SETTINGS_MODULE

    @property
    def database_url(self) -> str:
        return f"{self.pg}/{self.name}"

    @property
    def broker_url(self) -> str:
        return f"{self.amqp}/{self.name}"

    def env(self, **extra: str | None) -> dict[str, str]:
        """This environment pointed at the benchmark's resources; an ``extra`` of None
        leaves that variable as the caller's environment has it."""
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE=self.settings,
            DEBUG="0",
            CONTEXT_ENGINE_SKIP_DOTENV="1",
            DATABASE_URL=self.database_url,
            BROKER_URL=self.broker_url,
            REDIS_KEY_PREFIX=self.name,
            LOG_LEVEL="WARNING",
            PYTHONPATH=str(REPO),
        )
        for key, value in extra.items():
            if value is not None:
                env[key] = value
            elif key in os.environ:
                env[key] = os.environ[key]
            else:
                env.pop(key, None)
        return env

    def admin_sql(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"{self.pg}/postgres", autocommit=True) as conn:
            conn.execute(sql)

    def setup(self, *, database: bool = True, vhost: bool = True, migrate: bool = False) -> None:
        """A fresh database (migrated if asked) and vhost; leftovers of an earlier run are dropped first."""
        if database:
            self.admin_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.admin_sql(f'CREATE DATABASE "{self.name}"')
        if vhost:
            rabbitmqctl("delete_vhost", self.name, check=False)
            rabbitmqctl("add_vhost", self.name)
            rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        if migrate:
            subprocess.run(manage("migrate", "--noinput", "-v", "0"), cwd=REPO, env=self.env(), check=True)

    def teardown(self, *, database: bool = True, vhost: bool = True) -> None:
        """Drops what ``setup`` made and the Redis keys; best effort, each failure reported, none raised."""
        steps: list[tuple[str, Callable[[], object]]] = [("django connections", _close_django_connections)]
        if database:
            steps.append(("database", lambda: self.admin_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')))
        if vhost:
            steps.append(("vhost", lambda: rabbitmqctl("delete_vhost", self.name, check=False)))
        steps.append(("redis", self.clear_redis))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - cleanup reports and goes on; the figures matter more
                print(f"teardown ({what}): {exc}", file=sys.stderr)

    def clear_redis(self) -> None:
        """Every key carrying the prefix: cache entries, channel-layer keys, the benchmark's counters."""
        import redis

        client = redis.Redis.from_url(self.redis_url)
        keys = list(client.scan_iter(f"*{self.name}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        client.close()


def _close_django_connections() -> None:
    from django.conf import settings

    if settings.configured:
        from django.db import connections

        connections.close_all()


def django_setup(env: dict[str, str]) -> None:
    """Django in this process, on the same resources as the children."""
    os.environ.update(env)
    import django

    django.setup()


# --- child processes --------------------------------------------------------------


def manage(*args: str) -> list[str]:
    return [PY, "manage.py", *args]


def celery_worker(
    queue: str,
    *,
    name: str,
    concurrency: int,
    pool: str | None = None,
    include: str | None = None,
    loglevel: str = "WARNING",
) -> list[str]:
    cmd = [PY, "-m", "celery", "-A", "project", "worker", "-Q", queue, "-n", name]
    cmd += ["--pool", pool] if pool else []
    cmd += ["--concurrency", str(concurrency)]
    cmd += ["-I", include] if include else []
    return [*cmd, "--without-mingle", "--without-gossip", "--loglevel", loglevel]


def uvicorn(app: str, *, port: int, options: Sequence[str] = ()) -> list[str]:
    return [PY, "-m", "uvicorn", *options, app, "--host", "127.0.0.1", "--port", str(port)] + [
        "--log-level",
        "warning",
        "--no-access-log",
    ]


class Processes:
    """The processes one benchmark starts, each logging to a file of its own; stopped together."""

    def __init__(self) -> None:
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-"))
        self.procs: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, name: str, cmd: list[str], *, env: dict[str, str]) -> subprocess.Popen:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            # A session of its own: a Ctrl-C reaches this process, which stops the others in order.
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, name: str, needle: str, timeout: float = 120) -> None:
        """Until ``needle`` appears in the process's output; its log's tail in the error otherwise."""

        def seen() -> bool:
            if needle in self.log(name):
                return True
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log(name)[-3000:]}")
            return False

        try:
            wait_until(seen, timeout=timeout, interval=0.2, what=f"{name}: {needle!r}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log(name)[-3000:]}") from None

    def stop(self, name: str, timeout: float = 20) -> None:
        _stop([self.procs.pop(name)], timeout)

    def stop_all(self, timeout: float = 20) -> None:
        _stop(list(reversed(self.procs.values())), timeout)
        self.procs.clear()
        shutil.rmtree(self.log_dir, ignore_errors=True)


def _stop(procs: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM to all (graceful shutdown), then SIGKILL to any still running after ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- waiting ------------------------------------------------------------------------


def wait_until(check: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str) -> Any:
    """Calls ``check`` until it returns something true and returns that; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:g}s")
        time.sleep(interval)


def wait_http(url: str, *, timeout: float = 60) -> None:
    """Until the server at ``url`` answers at all (any status)."""
    import httpx

    def answers() -> bool:
        try:
            httpx.get(url, timeout=2)
        except httpx.HTTPError:
            return False
        return True

    wait_until(answers, timeout=timeout, interval=0.3, what=f"no answer from {url}")


# --- figures ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank on the sorted values; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_results(name: str, text: str) -> Path:
    """``bench/results/<name>.md`` (or under ``BENCH_RESULTS_DIR``, for a trial run that must not
    overwrite the committed figures)."""
    out = Path(os.environ.get("BENCH_RESULTS_DIR") or REPO / "bench" / "results") / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    print(f"wrote {shown}")
    return out
