"""Liveness and readiness.

``/healthz`` answers 200 while the process can serve a request at all: it
touches no dependency, so a database outage never gets every web instance
killed by its orchestrator (that would turn an outage into a restart storm).

``/readyz`` checks every dependency a request may need, concurrently, each with
a short timeout (``READINESS_TIMEOUT``, default 2 s), and answers 503 naming
the parts that failed, so a load balancer takes the instance out of rotation
until they recover:

* ``database``: ``SELECT 1`` on the probe's own PostgreSQL connection;
* ``redis``: ``PING`` on the probe's own Redis client;
* ``broker``: a passive ``exchange.declare`` round trip on the probe's own AMQP connection;
* ``channel_layer``: a message makes a round trip through the channel layer;
* ``workers`` (only with ``?workers=1``): at least one Celery node answers
  ``app.control.ping``; not part of the default so that web instances do not
  leave rotation when only the worker fleet is down.

The endpoint has no authentication (load balancers and kubelets call it), so it
must not be a lever: each process keeps one long-lived connection per
dependency for the probe (reopened, and the check retried once, when a reused
connection turns out dead), concurrent probes share one run of the checks, and
a result is served for ``READINESS_CACHE_SECONDS`` (default 1 s) before the
checks run again. A burst of N probes therefore costs one check and opens no
connection; before, each probe opened three (PostgreSQL, Redis, RabbitMQ).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from django.conf import settings
from django.core.signals import setting_changed


@dataclass
class CheckResult:
    name: str
    ok: bool
    duration_ms: float
    error: str | None = None
    detail: Any = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ok": self.ok, "duration_ms": round(self.duration_ms, 1)}
        if self.error:
            data["error"] = self.error
        if self.detail is not None:
            data["detail"] = self.detail
        return data


def readiness_timeout() -> float:
    return settings.READINESS_TIMEOUT


class PersistentClient:
    """One long-lived client of a dependency, used by one check at a time.

    ``open`` connects (its timeouts baked in), ``ping`` makes one round trip,
    ``close`` drops it. A failure drops the client; when a *reused* client
    fails fast (a socket the server closed while it sat idle, e.g. after a
    restart) the check is tried once more on a fresh one, so a recovered
    dependency is not reported down. A hung dependency fails at its timeout and
    is not retried.
    """

    def __init__(
        self, *, open: Callable[[float], Any], ping: Callable[[Any, float], Any], close: Callable[[Any], None]
    ) -> None:
        self._open, self._ping, self._close = open, ping, close
        self._client: Any = None
        self._lock = threading.Lock()

    def check(self, timeout: float) -> Any:
        # A check still stuck on a hung socket holds the lock: this one fails at its timeout.
        if not self._lock.acquire(timeout=timeout):
            raise TimeoutError(f"the previous check has not finished after {timeout}s")
        try:
            reused = self._client is not None
            started = time.monotonic()
            try:
                return self._ping_once(timeout)
            except Exception:
                if not reused or time.monotonic() - started > timeout / 2:
                    raise
            return self._ping_once(timeout)
        finally:
            self._lock.release()

    def _ping_once(self, timeout: float) -> Any:
        if self._client is None:
            self._client = self._open(timeout)
        try:
            return self._ping(self._client, timeout)
        except Exception:
            self._discard()
            raise

    def _discard(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # Closing a dead connection may fail; it is dropped either way.
            with contextlib.suppress(Exception):
                self._close(client)

    def reset(self) -> None:
        with self._lock:
            self._discard()


def _database_open(timeout: float) -> Any:
    import psycopg

    db = settings.DATABASES["default"]
    # A connection of its own (not Django's, which may be mid-transaction in
    # this thread): the question is whether the server answers clients.
    return psycopg.connect(
        host=db["HOST"] or None,
        port=db["PORT"] or None,
        dbname=db["NAME"],
        user=db["USER"] or None,
        password=db["PASSWORD"] or None,
        connect_timeout=max(1, int(timeout)),
        options=f"-c statement_timeout={int(timeout * 1000)}",
        autocommit=True,
    )


def _database_ping(conn: Any, timeout: float) -> None:
    conn.execute("SELECT 1").fetchone()


def _redis_open(timeout: float) -> Any:
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=timeout, socket_timeout=timeout)


def _redis_ping(client: Any, timeout: float) -> None:
    client.ping()


def _broker_open(timeout: float) -> Any:
    from apps.eventbus.amqp_io import BrokerHosts

    # Socket read/write timeouts: a broker that stops answering fails the check, it does not hang the thread.
    # A failover BROKER_URL is ready when any of its hosts answers (each tried once, within the timeout).
    hosts = BrokerHosts(settings.BROKER_URL)
    return hosts.connect(
        timeout=timeout,
        # A share each, so one black-holed node leaves the others time to answer.
        connect_timeout=timeout / len(hosts.urls),
        transport_options={"read_timeout": timeout, "write_timeout": timeout},
    )


def _broker_ping(conn: Any, timeout: float) -> None:
    # A synchronous AMQP method: proves the broker still serves this connection (a passive
    # declare of a built-in exchange creates nothing).
    conn.default_channel.exchange_declare(exchange="amq.direct", type="direct", passive=True)


def _close(client: Any) -> None:
    client.close()


database_client = PersistentClient(open=_database_open, ping=_database_ping, close=_close)
redis_client = PersistentClient(open=_redis_open, ping=_redis_ping, close=_close)
broker_client = PersistentClient(open=_broker_open, ping=_broker_ping, close=lambda conn: conn.release())


def check_database(timeout: float) -> None:
    database_client.check(timeout)


def check_redis(timeout: float) -> None:
    redis_client.check(timeout)


def check_broker(timeout: float) -> None:
    broker_client.check(timeout)


async def check_channel_layer(timeout: float) -> None:
    # The realtime app's probe: a round trip that leaves no subscription behind
    # (HAProxy calls /readyz every second).
    from apps.realtime.broadcast import channel_layer_check

    # Two tries in the time of one: a Redis restart leaves dead pooled connections
    # (dropped on the error), and on the pub/sub layer a publish can overtake its
    # channel's SUBSCRIBE at the server and be lost (seen under load: the check
    # then waits out its timeout although Redis is fine).
    deadline = time.monotonic() + timeout
    try:
        await channel_layer_check(timeout=timeout / 2)
    except Exception:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise
        await channel_layer_check(timeout=remaining)


def check_workers(timeout: float) -> list[str]:
    from apps.ops.fleet.figures import workers_ping

    nodes = workers_ping(timeout=min(timeout, 1.0))
    if not nodes:
        raise RuntimeError("no Celery worker answered ping")
    return nodes


# Blocking checks run here; each client's lock makes a stuck one hold one thread at most.
_CHECK_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="readiness")


async def _run(
    name: str, check: Callable[[float], Any] | Callable[[float], Awaitable[Any]], timeout: float, *, is_async: bool
) -> CheckResult:
    started = time.monotonic()
    try:
        if is_async:
            detail = await asyncio.wait_for(cast(Awaitable[Any], check(timeout)), timeout)
        else:
            # A thread: the blocking clients' own timeouts bound it; wait_for bounds the answer.
            # The process-wide pool, not the loop's default executor: under WSGI each probe
            # runs on a fresh event loop (async_to_sync), whose shutdown would wait for a
            # check still stuck on a dead socket and hold the answer past its timeout.
            future = asyncio.get_running_loop().run_in_executor(_CHECK_THREADS, check, timeout)
            detail = await asyncio.wait_for(future, timeout + 0.5)
    except TimeoutError:
        return CheckResult(name, False, (time.monotonic() - started) * 1000, error=f"timed out after {timeout}s")
    except Exception as exc:  # noqa: BLE001 - every failure is a readiness answer, never a 500
        message = str(exc) or exc.__class__.__name__
        return CheckResult(
            name, False, (time.monotonic() - started) * 1000, error=f"{exc.__class__.__name__}: {message}"[:300]
        )
    return CheckResult(name, True, (time.monotonic() - started) * 1000, detail=detail)


async def readiness_checks_run(*, include_workers: bool = False, timeout: float | None = None) -> list[CheckResult]:
    """Run every readiness check concurrently; each answers within about ``timeout`` seconds."""
    timeout = readiness_timeout() if timeout is None else timeout
    checks: list[tuple[str, Any, bool]] = [
        ("database", check_database, False),
        ("redis", check_redis, False),
        ("broker", check_broker, False),
        ("channel_layer", check_channel_layer, True),
    ]
    if include_workers:
        checks.append(("workers", check_workers, False))
    return list(await asyncio.gather(*(_run(n, c, timeout, is_async=a) for n, c, a in checks)))


@dataclass(frozen=True)
class Readiness:
    results: list[CheckResult]
    checked_at: datetime
    checked_monotonic: float

    @property
    def age_seconds(self) -> float:
        return time.monotonic() - self.checked_monotonic


# The last result per variant (with or without workers), shared by every event loop of the process.
_latest: dict[bool, Readiness] = {}
# The run in progress per variant, shared by every thread and event loop of the process (under
# WSGI each probe runs on an event loop of its own): probes that arrive meanwhile await it.
_in_flight: dict[bool, concurrent.futures.Future[Readiness]] = {}
_in_flight_lock = threading.Lock()


async def _checks_run(include_workers: bool) -> Readiness:
    results = await readiness_checks_run(include_workers=include_workers)
    readiness = Readiness(results, datetime.now(UTC), time.monotonic())
    _latest[include_workers] = readiness
    return readiness


def _finish(shared: concurrent.futures.Future[Readiness], include_workers: bool, task: asyncio.Task[Readiness]) -> None:
    with _in_flight_lock:
        _in_flight.pop(include_workers, None)
    if task.cancelled():
        shared.cancel()
    elif task.exception() is not None:
        shared.set_exception(cast(BaseException, task.exception()))
    else:
        shared.set_result(task.result())


async def readiness_run(*, include_workers: bool = False) -> Readiness:
    """The latest readiness, at most ``READINESS_CACHE_SECONDS`` old; concurrent callers share one run."""
    latest = _latest.get(include_workers)
    if latest is not None and latest.age_seconds < settings.READINESS_CACHE_SECONDS:
        return latest
    with _in_flight_lock:
        shared = _in_flight.get(include_workers)
        starts = shared is None
        if shared is None:
            shared = _in_flight[include_workers] = concurrent.futures.Future()
    if starts:
        task = asyncio.ensure_future(_checks_run(include_workers))
        task.add_done_callback(lambda done: _finish(shared, include_workers, done))
        # Shielded: a probe that gives up (client gone) does not cancel the run the others wait on.
        return await asyncio.shield(task)
    return await asyncio.wrap_future(shared)


def readiness_reset() -> None:
    """Forget the cached result and drop the probe's connections (the next check reopens them)."""
    _latest.clear()
    for client in (database_client, redis_client, broker_client):
        client.reset()


_RESET_ON = {"DATABASES", "REDIS_URL", "BROKER_URL", "CHANNEL_LAYERS", "READINESS_TIMEOUT", "READINESS_CACHE_SECONDS"}


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    # Tests point the probe at another service with override_settings; a cached
    # answer or an open connection to the old one would hide it.
    if setting in _RESET_ON:
        readiness_reset()


setting_changed.connect(_on_setting_changed, dispatch_uid="apps.ops.health.readiness_reset")


def readiness_payload(readiness: Readiness) -> tuple[int, dict[str, Any]]:
    results = readiness.results
    failing = [r.name for r in results if not r.ok]
    body: dict[str, Any] = {
        "status": "ok" if not failing else "unavailable",
        "checks": {r.name: r.as_dict() for r in results},
        # When the checks ran: probes within READINESS_CACHE_SECONDS share one run.
        "checked_at": readiness.checked_at.isoformat(),
        "age_seconds": round(readiness.age_seconds, 3),
    }
    if failing:
        body["failing"] = failing
        body["code"] = "not_ready"
        body["message"] = "Not ready: " + ", ".join(failing) + " unavailable."
        body["details"] = {"failing": failing}
    return (200 if not failing else 503), body
