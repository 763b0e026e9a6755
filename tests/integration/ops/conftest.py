"""Fixtures for the operations integration tests: real web instances behind a real HAProxy.

One pair of uvicorn instances and one HAProxy serve every load-balancer test
of this package (starting them costs seconds of CPU on a shared machine); a
test that restarts or reconfigures an instance leaves it as it found it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from django.conf import settings

from tests.support.haproxy import REPO_ROOT, HAProxy, WebInstance


def _env() -> dict[str, str]:
    """What the ``subprocess_env`` fixture gives, usable from package-scoped fixtures (after the test DB exists)."""
    from django.db import connection

    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings.test",
        TEST_RUN_ID=settings.TEST_RUN_ID,
        DATABASE_URL=(f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
                      f"/{db['NAME']}"),
        CONTEXT_ENGINE_SKIP_DOTENV="1",
        PYTHONPATH=str(REPO_ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="package")
def web_pair(django_db_setup, django_db_blocker) -> Iterator[list[WebInstance]]:
    with django_db_blocker.unblock():
        env = _env()
    instances = [WebInstance(name="web1", env=env), WebInstance(name="web2", env=env)]
    try:
        for instance in instances:
            instance.start()
        yield instances
    finally:
        for instance in instances:
            instance.stop()


@pytest.fixture(scope="package")
def haproxy(web_pair) -> Iterator[HAProxy]:
    proxy = HAProxy(backends=web_pair)
    proxy.start()
    try:
        proxy.wait_status("web1", "UP")
        proxy.wait_status("web2", "UP")
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def lb(haproxy, web_pair) -> Iterator[HAProxy]:
    """The shared HAProxy, with both instances running and in rotation before and after the test."""
    for instance in web_pair:
        if instance.process is None or instance.process.poll() is not None:
            instance.start()
        haproxy.command(f"set server web/{instance.name} state ready")
        haproxy.wait_status(instance.name, "UP", timeout=30)
    yield haproxy
    for instance in web_pair:
        if instance.process is None or instance.process.poll() is not None:
            instance.start()
        haproxy.command(f"set server web/{instance.name} state ready")
