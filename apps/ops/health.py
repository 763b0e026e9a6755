"""Liveness and readiness.

``/healthz`` answers 200 while the process can serve a request at all: it
touches no dependency, so a database outage never gets every web instance
killed by its orchestrator (that would turn an outage into a restart storm).

``/readyz`` checks every dependency a request may need, concurrently, each with
a short timeout (``READINESS_TIMEOUT``, default 2 s), and answers 503 naming
the parts that failed, so a load balancer takes the instance out of rotation
until they recover:

* ``database``: a new PostgreSQL connection runs ``SELECT 1``;
* ``redis``: ``PING`` on a new connection;
* ``broker``: an AMQP connection to RabbitMQ opens (handshake done);
* ``channel_layer``: a message makes a round trip through the channel layer;
* ``workers`` (only with ``?workers=1``): at least one Celery node answers
  ``app.control.ping``; not part of the default so that web instances do not
  leave rotation when only the worker fleet is down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings


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


def check_database(timeout: float) -> None:
    import psycopg

    db = settings.DATABASES["default"]
    # A connection of its own (not Django's, which may be mid-transaction in
    # this thread): the question is whether the server takes new clients.
    with psycopg.connect(
        host=db["HOST"] or None,
        port=db["PORT"] or None,
        dbname=db["NAME"],
        user=db["USER"] or None,
        password=db["PASSWORD"] or None,
        connect_timeout=max(1, int(timeout)),
        options=f"-c statement_timeout={int(timeout * 1000)}",
    ) as conn:
        conn.execute("SELECT 1").fetchone()


def check_redis(timeout: float) -> None:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


def check_broker(timeout: float) -> None:
    from kombu import Connection

    with Connection(settings.BROKER_URL, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


async def check_channel_layer(timeout: float) -> None:
    # The realtime app's probe: a round trip that leaves no subscription behind
    # (HAProxy calls /readyz every second).
    from apps.realtime.broadcast import channel_layer_check

    await channel_layer_check(timeout=timeout)


def check_workers(timeout: float) -> list[str]:
    from apps.ops.fleet.figures import workers_ping

    nodes = workers_ping(timeout=min(timeout, 1.0))
    if not nodes:
        raise RuntimeError("no Celery worker answered ping")
    return nodes


async def _run(
    name: str, check: Callable[[float], Any] | Callable[[float], Awaitable[Any]], timeout: float, *, is_async: bool
) -> CheckResult:
    started = time.monotonic()
    try:
        if is_async:
            detail = await asyncio.wait_for(check(timeout), timeout)  # type: ignore[arg-type]
        else:
            # A thread: the blocking clients' own timeouts bound it; wait_for bounds the answer.
            detail = await asyncio.wait_for(asyncio.to_thread(check, timeout), timeout + 0.5)
    except TimeoutError:
        return CheckResult(name, False, (time.monotonic() - started) * 1000, error=f"timed out after {timeout}s")
    except Exception as exc:  # noqa: BLE001 - every failure is a readiness answer, never a 500
        message = str(exc) or exc.__class__.__name__
        return CheckResult(
            name, False, (time.monotonic() - started) * 1000, error=f"{exc.__class__.__name__}: {message}"[:300]
        )
    return CheckResult(name, True, (time.monotonic() - started) * 1000, detail=detail)


async def readiness_run(*, include_workers: bool = False, timeout: float | None = None) -> list[CheckResult]:
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


def readiness_payload(results: list[CheckResult]) -> tuple[int, dict[str, Any]]:
    failing = [r.name for r in results if not r.ok]
    body: dict[str, Any] = {
        "status": "ok" if not failing else "unavailable",
        "checks": {r.name: r.as_dict() for r in results},
    }
    if failing:
        body["failing"] = failing
        body["code"] = "not_ready"
        body["message"] = "Not ready: " + ", ".join(failing) + " unavailable."
        body["details"] = {"failing": failing}
    return (200 if not failing else 503), body
