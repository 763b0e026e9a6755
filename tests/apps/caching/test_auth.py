"""Token authentication served from the cache, and revoked everywhere at once."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.caching.auth import CachedTokenAuthentication, token_cache_key
from apps.caching.cache import get_cache

URL = "/api/v1/sessions/"


@pytest.fixture(autouse=True)
def _cache_ready():
    assert get_cache().wait_ready(5)
    get_cache().local.clear()


def _client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def _token_queries(queries: list[dict]) -> int:
    return sum('"authtoken_token"' in q["sql"] for q in queries)


def test_rest_framework_uses_the_cached_class():
    from rest_framework.settings import api_settings

    assert CachedTokenAuthentication in api_settings.DEFAULT_AUTHENTICATION_CLASSES


def test_a_known_token_is_checked_once_then_served_from_the_cache(user):
    token = Token.objects.create(user=user)
    client = _client(token.key)
    with CaptureQueriesContext(connection) as first:
        assert client.get(URL).status_code == 200
    with CaptureQueriesContext(connection) as second:
        assert client.get(URL).status_code == 200
    assert _token_queries(first.captured_queries) == 1
    assert _token_queries(second.captured_queries) == 0


def test_the_password_hash_never_reaches_redis(user):
    token = Token.objects.create(user=user)
    assert _client(token.key).get(URL).status_code == 200
    client = redis.Redis.from_url(settings.REDIS_URL)
    blob = client.get(f"{get_cache().base}:v:{token_cache_key(token.key)}")
    assert blob is not None
    assert user.password.encode() not in blob
    assert all(token.key.encode() not in name for name in client.keys(f"{settings.REDIS_KEY_PREFIX}*"))


def test_a_deleted_token_is_refused_at_once(user):
    token = Token.objects.create(user=user)
    client = _client(token.key)
    assert client.get(URL).status_code == 200
    token.delete()
    response = client.get(URL)
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


def test_a_deactivated_user_is_refused_at_once(user):
    token = Token.objects.create(user=user)
    client = _client(token.key)
    assert client.get(URL).status_code == 200
    user.is_active = False
    user.save()
    assert client.get(URL).status_code == 401


@pytest.mark.parametrize("key", ["nope", "x" * 65, "bad\x00key"])
def test_unknown_or_malformed_tokens_get_401(db, key):
    for _ in range(2):
        assert _client(key).get(URL).status_code == 401
