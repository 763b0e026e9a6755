"""The real API server with its cache on a private Redis that is stopped and started under reads."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from apps.context import services
from tests.support.services import PrivateRedis, free_port, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    instance = PrivateRedis()
    instance.start()
    yield instance
    instance.cleanup()


@pytest.fixture
def api_server(subprocess_env, python_bin, private_redis) -> Iterator[str]:
    port = free_port()
    # Only the cache uses the private Redis; throttling and the channel layer stay on the shared one.
    env = subprocess_env(CACHE_REDIS_URL=private_redis.url)
    process = subprocess.Popen(
        [
            python_bin,
            "-m",
            "uvicorn",
            "project.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cached_values(instance: PrivateRedis) -> int:
    client = redis.Redis.from_url(instance.url, socket_connect_timeout=0.5)
    try:
        return sum(1 for _ in client.scan_iter(match="*:cache:*:v:*"))
    finally:
        client.close()


def test_no_error_reaches_the_api_while_redis_goes_away_and_comes_back(api_server, private_redis, make_user):
    from rest_framework.authtoken.models import Token

    alice = make_user("alice")
    session = services.session_create(owner=alice, title="Outage")
    token = Token.objects.create(user=alice).key
    client = httpx.Client(base_url=api_server, headers={"Authorization": f"Token {token}"}, timeout=10)
    context_url = f"/api/v1/sessions/{session.pk}/context/"

    # warm: the snapshot lands in the private Redis
    assert client.get(context_url).status_code == 200
    deadline = time.monotonic() + 10
    while _cached_values(private_redis) == 0 and time.monotonic() < deadline:
        client.get(context_url)
        time.sleep(0.05)
    assert _cached_values(private_redis) > 0

    statuses: list[int] = []
    slowest = [0.0]
    stop = threading.Event()

    def read_continuously() -> None:
        reader = httpx.Client(base_url=api_server, headers={"Authorization": f"Token {token}"}, timeout=10)
        while not stop.is_set():
            started = time.monotonic()
            statuses.append(reader.get(context_url).status_code)
            slowest[0] = max(slowest[0], time.monotonic() - started)
        reader.close()

    thread = threading.Thread(target=read_continuously)
    thread.start()
    try:
        time.sleep(0.5)
        private_redis.stop()
        time.sleep(0.5)
        # a write while Redis is down: answered, and its invalidation must not be lost
        written = client.post(
            f"/api/v1/sessions/{session.pk}/events/",
            json={"event_type": "context_update", "data": {"text": "during outage"}},
        )
        assert written.status_code == 201, written.text
        time.sleep(1.5)
        private_redis.start()
        time.sleep(1.5)
    finally:
        stop.set()
        thread.join()

    assert len(statuses) > 20
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert slowest[0] < 2.0  # a dead Redis costs a fast failure, not a hang

    # recovered: the cache fills the private Redis again, and serves the write made during the outage
    deadline = time.monotonic() + 10
    while _cached_values(private_redis) == 0 and time.monotonic() < deadline:
        assert client.get(context_url).status_code == 200
        time.sleep(0.05)
    assert _cached_values(private_redis) > 0
    assert client.get(context_url).json()["last_seq"] == 1
    client.close()
