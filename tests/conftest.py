"""Fixtures every test may use. Area-specific fixtures live next to their tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.support.processes import child_env

REPO_ROOT = Path(__file__).resolve().parent.parent


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


@pytest.fixture(scope="session", autouse=True)
def _broker_vhost() -> Iterator[str]:
    """A RabbitMQ virtual host of this run's own on the shared broker."""
    vhost = settings.TEST_VHOST
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield vhost
    subprocess.run(
        ["rabbitmqctl", "delete_vhost", vhost], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60
    )


@pytest.fixture(autouse=True)
def _clear_redis_keys() -> Iterator[None]:
    """Tests start with none of this run's Redis keys (throttle counters, cache)."""
    yield
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        keys = list(client.scan_iter(f"*{settings.REDIS_KEY_PREFIX}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture
def make_user(db) -> Callable[..., object]:
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    counter = {"n": 0}

    def factory(username: str | None = None, *, staff: bool = False, password: str = "pw-Secret-123") -> object:
        counter["n"] += 1
        name = username or f"user{counter['n']}"
        return user_model.objects.create_user(username=name, password=password, is_staff=staff, is_superuser=staff)

    return factory


@pytest.fixture
def user(make_user):
    return make_user("alice")


@pytest.fixture
def other_user(make_user):
    return make_user("bob")


@pytest.fixture
def staff_user(make_user):
    return make_user("operator", staff=True)


@pytest.fixture
def api_client_for() -> Callable[[object], object]:
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    def factory(user) -> APIClient:
        client = APIClient()
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return factory


@pytest.fixture
def api_client(api_client_for, user):
    return api_client_for(user)


@pytest.fixture
def session_factory(user) -> Callable[..., object]:
    from apps.context import services

    def factory(*, owner=None, title: str = "Design review", metadata: dict | None = None):
        return services.session_create(owner=owner or user, title=title, metadata=metadata)

    return factory


@pytest.fixture
def subprocess_env() -> Callable[..., dict[str, str]]:
    """Environment for a process a test starts (worker, relay, ASGI server).

    It points at this run's test database, vhost and Redis prefix; call it
    inside a test that uses ``transactional_db`` so the data it sees is
    committed.
    """

    def factory(**overrides: str) -> dict[str, str]:
        return child_env(**overrides)

    return factory


@pytest.fixture
def python_bin() -> str:
    return sys.executable


# --- what the data migrations seed, after a transactional test's flush ---------------

# A transactional test ends with a flush that empties every table, the rows data
# migrations seed included (the default beat schedule, the operators group). Under
# pytest-xdist a worker runs whole files in turn, so a later file's ordinary tests
# may run after such a flush: put those rows back, as the migrations made them.
SEEDING_MIGRATIONS = (
    ("apps.batch.migrations.0002_default_beat_schedule", "create_schedule"),
    ("apps.ops.migrations.0003_operators_group", "operators_group_create"),
    ("apps.ops.migrations.0004_operators_console_permissions", "console_permissions_grant"),
    ("apps.ops.migrations.0005_fleet_control", "fleet_control_grant"),
)
_migration_state: list[object] = []


def _transactional(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("django_db")
    fixtures = getattr(item, "fixturenames", ())
    return bool(marker and marker.kwargs.get("transaction")) or "transactional_db" in fixtures


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield  # the test's fixtures are finalized: its flush has happened
    # After the last test the session's fixtures are gone too (the test database with them).
    if nextitem is None or not _transactional(item):
        return
    import importlib
    from types import SimpleNamespace

    from django.db import connection
    from django.db.migrations.loader import MigrationLoader
    from pytest_django.plugin import blocking_manager_key

    with item.config.stash[blocking_manager_key].unblock():
        if not _migration_state:
            _migration_state.append(MigrationLoader(connection).project_state().apps)
        editor = SimpleNamespace(connection=connection)
        for module, function in SEEDING_MIGRATIONS:
            getattr(importlib.import_module(module), function)(_migration_state[0], editor)
        connection.close()
