"""Rate limits: Redis-backed DRF throttles answer 429 with Retry-After."""

from __future__ import annotations

import copy

import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework.test import APIClient

from apps.common.throttling import reset_local_counts
from tests.apps.context.test_api_sessions import assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_counts():
    # Earlier tests' requests (at the test suite's huge rates) may still be
    # counted locally, unreported; these tests measure from zero.
    reset_local_counts()
    yield
    reset_local_counts()


def rates(**changes: str) -> dict:
    config = copy.deepcopy(settings.REST_FRAMEWORK)
    config["DEFAULT_THROTTLE_RATES"].update(changes)
    return config


def test_per_user_limit_answers_429_with_retry_after(api_client, api_client_for, other_user):
    with override_settings(REST_FRAMEWORK=rates(user="3/min")):
        for _ in range(3):
            assert api_client.get("/api/v1/sessions/").status_code == 200
        limited = api_client.get("/api/v1/sessions/")
        body = assert_error(limited, 429, "rate_limited")
        assert 0 < int(limited.headers["Retry-After"]) <= 60
        assert body["details"]["retry_after_seconds"] >= 1
        # Another user has a budget of their own.
        assert api_client_for(other_user).get("/api/v1/sessions/").status_code == 200


def test_counters_live_in_redis(api_client):
    import redis

    with override_settings(REST_FRAMEWORK=rates(user="5/min")):
        api_client.get("/api/v1/sessions/")
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        keys = list(client.scan_iter(f"{settings.REDIS_KEY_PREFIX}:*throttle:user:*"))
    finally:
        client.close()
    assert keys, "the throttle history must be in the shared Redis cache"


def test_per_ip_limit_covers_every_user_from_one_address(api_client_for, make_user):
    clients = [api_client_for(make_user()) for _ in range(3)]
    with override_settings(REST_FRAMEWORK=rates(ip="4/min")):
        statuses = [c.get("/api/v1/preferences/").status_code for c in clients for _ in range(2)]
        assert statuses.count(200) == 4 and statuses[-2:] == [429, 429]
        # A spoofed X-Forwarded-For does not buy a fresh budget (NUM_PROXIES=0).
        assert clients[0].get("/api/v1/preferences/", HTTP_X_FORWARDED_FOR="10.9.9.9").status_code == 429


def test_login_attempts_are_limited_per_ip(user):
    with override_settings(REST_FRAMEWORK=rates(login="2/min")):
        client = APIClient()
        for _ in range(2):
            assert (
                client.post("/api/v1/auth/token/", {"username": "alice", "password": "x"}, format="json").status_code
                == 400
            )
        assert_error(
            client.post("/api/v1/auth/token/", {"username": "alice", "password": "pw-Secret-123"}, format="json"), 429
        )


def test_redis_down_lets_requests_through(api_client):
    dead = copy.deepcopy(settings.CACHES)
    dead["default"]["LOCATION"] = "redis://127.0.0.1:1/0"
    with override_settings(CACHES=dead, REST_FRAMEWORK=rates(user="1/min")):
        assert api_client.get("/api/v1/preferences/").status_code == 200
        assert api_client.get("/api/v1/preferences/").status_code == 200


def test_large_limits_report_to_redis_in_batches(api_client):
    import redis

    with override_settings(REST_FRAMEWORK=rates(user="1000/min")):
        for _ in range(6):
            assert api_client.get("/api/v1/preferences/").status_code == 200
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        (key,) = list(client.scan_iter(f"{settings.REDIS_KEY_PREFIX}:*throttle:user:*"))
        # The first request reported itself; the next five wait for 1% of the limit (10) or 1 s.
        assert int(client.get(key)) == 1
    finally:
        client.close()


def test_a_refusal_is_always_confirmed_by_redis(api_client):
    import redis

    with override_settings(REST_FRAMEWORK=rates(user="200/min")):
        assert api_client.get("/api/v1/preferences/").status_code == 200
        client = redis.Redis.from_url(settings.REDIS_URL)
        try:
            (key,) = list(client.scan_iter(f"{settings.REDIS_KEY_PREFIX}:*throttle:user:*"))
            # Another instance used up the budget: the next report sees it and refuses.
            client.incrby(key, 300)
        finally:
            client.close()
        statuses = [api_client.get("/api/v1/preferences/").status_code for _ in range(3)]
        assert 429 in statuses
