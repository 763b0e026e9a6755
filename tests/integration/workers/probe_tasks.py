"""Tasks only the integration tests use; workers load them with ``-I tests.integration.workers.probe_tasks``.

Side effects go to Redis under this run's key prefix, so a test can count runs.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import signals
from django.conf import settings

from apps.eventbus.queues import Queue
from workers.base import PermanentError, TransientError, task


def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def key(*parts: str) -> str:
    return ":".join((settings.REDIS_KEY_PREFIX, "probe", *parts))


@signals.worker_ready.connect
def _ready(sender: Any = None, **kwargs: Any) -> None:
    client().set(key("ready", os.environ.get("PROBE_WORKER_NAME", "worker")), os.getpid(), ex=600)


@task(name="test.record", queue=Queue.AI_BATCH)
def record(*, tag: str, item: str, **kwargs: Any) -> None:
    """Completes: records the item once per run (the list shows duplicates, the set dedupes)."""
    r = client()
    r.rpush(key(tag, "runs"), item)
    r.sadd(key(tag, "done"), item)
    r.hincrby(key(tag, "by_worker"), os.environ.get("PROBE_WORKER_NAME", "worker"), 1)


@task(name="test.sleep_record", queue=Queue.AI_BATCH)
def sleep_record(*, tag: str, item: str, seconds: float, **kwargs: Any) -> None:
    r = client()
    r.rpush(key(tag, "started"), item)
    time.sleep(seconds)
    r.rpush(key(tag, "runs"), item)
    r.sadd(key(tag, "done"), item)
    r.hincrby(key(tag, "by_worker"), os.environ.get("PROBE_WORKER_NAME", "worker"), 1)


@task(
    name="test.flaky",
    queue=Queue.AI_BATCH,
    retry_on=(ConnectionError,),
    max_attempts=4,
    backoff_base=1.0,
    backoff_max=2.0,
)
def flaky(*, tag: str, fail_times: int, **kwargs: Any) -> None:
    """Raises a transient error ``fail_times`` times, then succeeds."""
    r = client()
    n = r.incr(key(tag, "attempts"))
    r.rpush(key(tag, "attempt_times"), time.time())
    if n <= fail_times:
        raise ConnectionError(f"transient failure {n}")
    r.sadd(key(tag, "done"), "ok")


@task(name="test.always_transient", queue=Queue.AI_BATCH, max_attempts=3, backoff_base=1.0, backoff_max=1.0)
def always_transient(*, tag: str, **kwargs: Any) -> None:
    r = client()
    r.incr(key(tag, "attempts"))
    raise TransientError("the downstream is still down")


@task(name="test.permanent", queue=Queue.AI_BATCH)
def permanent(*, tag: str, **kwargs: Any) -> None:
    r = client()
    n = r.incr(key(tag, "attempts"))
    if r.get(key(tag, "healed")):
        r.sadd(key(tag, "done"), "ok")
        return
    raise PermanentError(f"bad input for {tag} (attempt {n})")


@task(name="test.crash", queue=Queue.AI_BATCH)
def crash(*, tag: str, **kwargs: Any) -> None:
    client().incr(key(tag, "attempts"))
    os._exit(70)


@task(name="test.needs_args", queue=Queue.AI_BATCH)
def needs_args(*, tag: str, count: int, **kwargs: Any) -> None:
    client().sadd(key(tag, "done"), str(count))


@task(name="test.hold", queue=Queue.AI_BATCH)
def hold(*, tag: str, item: str, **kwargs: Any) -> None:
    """Runs until the test sets ``<tag>:release`` (at most 60 s): a slot kept busy on a condition, not a clock."""
    r = client()
    r.rpush(key(tag, "started"), item)
    deadline = time.monotonic() + 60
    while not r.get(key(tag, "release")) and time.monotonic() < deadline:
        time.sleep(0.02)
    r.rpush(key(tag, "runs"), item)
    r.sadd(key(tag, "done"), item)


@task(
    name="test.retry_once_later",
    queue=Queue.AI_BATCH,
    retry_on=(ConnectionError,),
    max_attempts=2,
    backoff_base=12.0,
    backoff_max=12.0,
)
def retry_once_later(*, tag: str, **kwargs: Any) -> None:
    """Fails its first attempt (retried after a 6-12 s countdown), then records one run."""
    r = client()
    if r.incr(key(tag, "attempts")) == 1:
        raise ConnectionError("first attempt fails")
    r.rpush(key(tag, "runs"), "ok")
