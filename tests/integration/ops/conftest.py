"""Fixtures for the operations integration tests: real web instances behind a real HAProxy.

One pair of uvicorn instances and one HAProxy serve every load-balancer test
of this package (starting them costs seconds of CPU on a shared machine); a
test that restarts or reconfigures an instance leaves it as it found it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.haproxy import HAProxy, WebInstance
from tests.support.processes import child_env


def _env() -> dict[str, str]:
    """What the ``subprocess_env`` fixture gives, usable from package-scoped fixtures (after the test DB exists)."""
    return child_env()


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
    haproxy.wait_settled()
    yield haproxy
    for instance in web_pair:
        if instance.process is None or instance.process.poll() is not None:
            instance.start()
        haproxy.command(f"set server web/{instance.name} state ready")
