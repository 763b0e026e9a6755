"""/readyz names the part that is down, and recovers, against private PostgreSQL, Redis and RabbitMQ instances."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.haproxy import WebInstance
from tests.support.services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis

pytestmark = [pytest.mark.integration]


@pytest.fixture
def private_services() -> Iterator[tuple[PrivatePostgres, PrivateRedis, PrivateRabbitMQ]]:
    services = (PrivatePostgres(), PrivateRedis(), PrivateRabbitMQ())
    try:
        for service in services:
            service.start()
        yield services
    finally:
        for service in services:
            service.cleanup()


def _wait_ready(url: str, *, ready: bool, timeout: float = 40.0) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        response = httpx.get(url, timeout=10)
        body = response.json()
        if (response.status_code == 200) == ready:
            assert response.status_code == (200 if ready else 503)
            return body
        time.sleep(0.3)
    raise AssertionError(f"/readyz never became {'ready' if ready else 'unready'}: {body}")


def test_readiness_names_each_stopped_service_and_recovers(private_services, subprocess_env):
    postgres, redis_, rabbit = private_services
    web = WebInstance(
        name="readyz", env=subprocess_env(DATABASE_URL=postgres.url, REDIS_URL=redis_.url, TEST_BROKER_URL=rabbit.url)
    )
    web.start()
    url = f"http://127.0.0.1:{web.port}/readyz"
    try:
        assert _wait_ready(url, ready=True)["status"] == "ok"

        for service, parts in ((postgres, ["database"]), (redis_, ["redis", "channel_layer"]), (rabbit, ["broker"])):
            service.stop()
            started = time.monotonic()
            body = _wait_ready(url, ready=False)
            assert sorted(body["failing"]) == sorted(parts), body
            assert all(part in body["message"] for part in parts)
            assert time.monotonic() - started < 15, "each check answers within its short timeout"
            service.start()
            body = _wait_ready(url, ready=True)
            assert all(check["ok"] for check in body["checks"].values())
    finally:
        web.stop()
        if "Traceback" in web.log():
            print(web.log())
