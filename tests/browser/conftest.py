"""A real browser (the system Chromium, headless, driven by Playwright) against the real platform.

The stack is the AI integration tests' (``tests/integration/ai/conftest.py``:
uvicorn, outbox relay, event subscribers, a realtime worker with the real
model); the page is served by that uvicorn and talks to it as any client would.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ai.conftest import AiStack, purge_realtime_queue, start_stack
from tests.support.haproxy import WebInstance

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[AiStack]:
    with django_db_blocker.unblock():
        purge_realtime_queue()
        # The page's origin is this test server's own, on a port picked at start.
        live = start_stack(tmp_path_factory.mktemp("browser-stack"), AI_DEVICE="cpu", ALLOWED_ORIGINS="*")
    yield live
    for proc in live.procs.values():
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is not installed (make test installs it: project/bootstrap.py)"
    # Playwright's sync API keeps an event loop running in this thread; the test's own
    # ORM calls are still plain synchronous code (Playwright's documented Django setup).
    os.environ[ASYNC_UNSAFE] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            yield browser
            browser.close()
    finally:
        os.environ.pop(ASYNC_UNSAFE, None)


@pytest.fixture
def artifacts(tmp_path) -> Path:
    """Where a test keeps its screenshots: ``$TEST_ARTIFACTS_DIR/browser/``, else the test's tmp directory."""
    path = Path(os.environ.get("TEST_ARTIFACTS_DIR") or tmp_path) / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


OPERATOR_PASSWORD = "pw-Secret-123"


@pytest.fixture
def web(subprocess_env) -> Iterator[WebInstance]:
    """One real web instance (uvicorn) for the admin pages; the browser's async-unsafe flag stays here."""
    instance = WebInstance(name="browser", env={k: v for k, v in subprocess_env().items() if k != ASYNC_UNSAFE})
    instance.start()
    yield instance
    instance.stop()


def operator_create(username: str) -> Any:
    """A staff user in the operators group, with ``OPERATOR_PASSWORD``."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    user = get_user_model().objects.create_user(username=username, password=OPERATOR_PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=settings.OPS_OPERATORS_GROUP))
    return user
