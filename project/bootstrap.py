"""Set-up shared by ``make up`` and ``make test``: services reachable, database present.

``python -m project.bootstrap`` checks PostgreSQL, Redis and RabbitMQ on the
URLs the settings use. A service that does not answer on a local address is
started when it is installed on this machine (Debian packages); otherwise the
command stops with a message saying exactly what to run. Then the database is
created if missing. It imports no Django app code, so it runs before migrate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.dev")

from project import env  # (reads .env)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
COMPOSE_HINT = "or run the services in containers: docker compose up -d postgres redis rabbitmq"


def _say(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host or "127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _wait(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def _run(cmd: str) -> None:
    _say(f"starting: {cmd}")
    subprocess.run(  # noqa: S602 - the fixed start commands built in this module
        cmd,
        shell=True,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def _postgres_start_command() -> str | None:
    if not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    if not versions:
        return None
    return f"pg_ctlcluster --skip-systemctl-redirect {versions[-1]} main start"


def _redis_start_command(port: int) -> str | None:
    if not shutil.which("redis-server"):
        return None
    workdir = "/var/lib/redis" if Path("/var/lib/redis").is_dir() else "/tmp"  # noqa: S108 - Redis keeps nothing there
    logfile = "/var/log/redis/ci.log" if Path("/var/log/redis").is_dir() else "/tmp/redis-context-engine.log"  # noqa: S108 - a log
    return (
        f'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port {port} --save "" --appendonly no '
        f"--dir {workdir} --logfile {logfile}"
    )


def _rabbitmq_start_command() -> str | None:
    return "rabbitmq-server -detached" if shutil.which("rabbitmq-server") else None


def _answers(name: str, url: str) -> bool:
    """A real protocol round trip: some networks accept any TCP connection."""
    try:
        if name == "PostgreSQL":
            import psycopg

            db = env.database_from_url(url)
            psycopg.connect(
                host=db["HOST"] or "127.0.0.1",
                port=db["PORT"] or "5432",
                user=db["USER"] or "postgres",
                password=db["PASSWORD"] or None,
                dbname="postgres",
                connect_timeout=2,
            ).close()
        elif name == "Redis":
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
            client.ping()
            client.close()
        else:
            from kombu import Connection

            with Connection(url, connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # noqa: BLE001 - any failure means "does not answer"
        return False


def ensure_service(name: str, url: str, default_port: int, start_command: str | None, wait_seconds: float) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    if _port_open(host, port) and _answers(name, url):
        _say(f"{name} is up at {host}:{port}")
        return
    if host in LOCAL_HOSTS and start_command:
        _run(start_command)
        if _wait(lambda: _answers(name, url), wait_seconds):
            _say(f"{name} started at {host}:{port}")
            return
    hint = start_command or f"install and start {name}"
    sys.exit(
        f"[bootstrap] {name} does not answer at {host}:{port}.\n"
        f"  Start it with: {hint}\n"
        f"  {COMPOSE_HINT}\n"
        f"  or point the settings elsewhere with the URL in .env (see .env.example)."
    )


def ensure_broker(url: str) -> None:
    """A failover BROKER_URL (``;``-separated nodes of one cluster) is usable when any node answers.

    None answering: the first URL is treated like a single broker (started here when local).
    """
    urls = [part.strip() for part in url.split(";") if part.strip()]
    if len(urls) > 1:
        for candidate in urls:
            parts = urlsplit(candidate)
            host, port = parts.hostname or "127.0.0.1", parts.port or 5672
            if _port_open(host, port) and _answers("RabbitMQ", candidate):
                _say(f"RabbitMQ is up at {host}:{port} (one of {len(urls)} nodes)")
                return
    ensure_service("RabbitMQ", urls[0] if urls else url, 5672, _rabbitmq_start_command(), 90)


def ensure_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    settings = env.database_from_url(url)
    admin_conninfo = dict(
        host=settings["HOST"] or "127.0.0.1",
        port=settings["PORT"] or "5432",
        user=settings["USER"] or "postgres",
        password=settings["PASSWORD"] or None,
        dbname="postgres",
        connect_timeout=5,
    )

    def connects() -> bool:
        try:
            psycopg.connect(**admin_conninfo).close()
            return True
        except psycopg.OperationalError:
            return False

    if not _wait(connects, 30):
        sys.exit(f"[bootstrap] PostgreSQL accepts TCP but refuses a session as {admin_conninfo['user']!r}.")
    with psycopg.connect(**admin_conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings["NAME"],)).fetchone()
        if exists:
            _say(f"database {settings['NAME']!r} exists")
        else:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings["NAME"])))
            _say(f"database {settings['NAME']!r} created")


# Debian packages: HAProxy is make up's front door (project/serve.py routes /ws/ to
# uvicorn and the rest to gunicorn through it) and fronts two web instances in the
# load-balancing tests; Chromium is the real browser of tests/browser/ (Playwright).
PLATFORM_PACKAGES = {"haproxy": ("haproxy",)}
TEST_PACKAGES = {**PLATFORM_PACKAGES, "chromium": ("chromium", "chromium-browser")}


def ensure_tools(packages: dict[str, tuple[str, ...]], *, required: bool) -> None:
    missing = [pkg for pkg, binaries in packages.items() if not any(shutil.which(b) for b in binaries)]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        names = " ".join(missing)
        _say(f"installing {names} (Debian packages)")
        subprocess.run(  # noqa: S602 - a fixed command line over the fixed package names above
            f"apt-get install -y -q {names} || (apt-get update -q && apt-get install -y -q {names})",
            shell=True,
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    still = [pkg for pkg, binaries in packages.items() if not any(shutil.which(b) for b in binaries)]
    if still and required:
        sys.exit(f"[bootstrap] the tests need these Debian packages: sudo apt-get install -y {' '.join(still)}")
    if still:
        _say(f"not installed: {' '.join(still)} (sudo apt-get install -y {' '.join(still)}); make up runs without it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--for-tests", action="store_true", help="also install what the test suite needs")
    args = parser.parse_args()

    database_url = env.get_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/context_engine")
    redis_url = env.get_str("REDIS_URL", "redis://127.0.0.1:6379/0")
    broker_url = env.get_str("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")

    ensure_service("PostgreSQL", database_url, 5432, _postgres_start_command(), 30)
    redis_port = urlsplit(redis_url).port or 6379
    ensure_service("Redis", redis_url, 6379, _redis_start_command(redis_port), 15)
    ensure_broker(broker_url)
    ensure_database(database_url)
    if args.for_tests:
        ensure_tools(TEST_PACKAGES, required=True)
    else:
        ensure_tools(PLATFORM_PACKAGES, required=False)


if __name__ == "__main__":
    main()
