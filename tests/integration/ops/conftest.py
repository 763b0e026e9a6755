"""Fixtures for the operations integration tests: real web instances behind a real HAProxy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.haproxy import HAProxy, WebInstance


@pytest.fixture
def web_pair(transactional_db, subprocess_env) -> Iterator[list[WebInstance]]:
    env = subprocess_env()
    instances = [WebInstance(name="web1", env=env), WebInstance(name="web2", env=env)]
    try:
        for instance in instances:
            instance.start()
        yield instances
    finally:
        for instance in instances:
            instance.stop()


@pytest.fixture
def haproxy(web_pair) -> Iterator[HAProxy]:
    proxy = HAProxy(backends=web_pair)
    proxy.start()
    try:
        proxy.wait_status("web1", "UP")
        proxy.wait_status("web2", "UP")
        yield proxy
    finally:
        proxy.stop()
