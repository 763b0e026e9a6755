"""While PostgreSQL is away, the API answers 503 JSON with Retry-After, never an HTML 500 page.

A real web process on a private PostgreSQL, with DEBUG on as under ``make up``
(Django's technical 500 page is what clients got before), then off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import psycopg
import pytest

from tests.support.haproxy import WebInstance
from tests.support.processes import REPO_ROOT
from tests.support.services import PrivatePostgres

pytestmark = [pytest.mark.integration]


@pytest.fixture
def postgres():
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.cleanup()


@pytest.mark.parametrize(
    ("settings_module", "debug"), [("project.settings.dev", "1"), ("project.settings.test", "0")], ids=["debug", "prod"]
)
def test_an_append_during_a_database_outage_gets_503_json_with_retry_after(
    postgres, subprocess_env, settings_module, debug
):
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE ce_api_outage")
    env = subprocess_env(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{postgres.port}/ce_api_outage",
        DJANGO_SETTINGS_MODULE=settings_module,
        DEBUG=debug,
        REDIS_KEY_PREFIX=f"ce-api-outage-{os.getpid()}",
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO_ROOT, env=env, check=True)
    made = subprocess.run(
        [sys.executable, "manage.py", "create_api_token", "outage_alice"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    headers = {"Authorization": f"Token {made.stdout.strip().splitlines()[-1]}"}
    web = WebInstance(name="db-outage", env=env)
    web.start()
    base = f"http://127.0.0.1:{web.port}/api/v1"
    try:
        session = httpx.post(f"{base}/sessions/", json={"title": "outage"}, headers=headers, timeout=20)
        assert session.status_code == 201, session.text
        events = f"{base}/sessions/{session.json()['id']}/events/"
        note = {"event_type": "note", "data": {"text": "before"}}
        assert httpx.post(events, json=note, headers=headers, timeout=20).status_code == 201

        postgres.stop()
        during = httpx.post(events, json={**note, "data": {"text": "during"}}, headers=headers, timeout=20)
        assert during.status_code == 503, during.text[:500]
        assert during.headers["content-type"].startswith("application/json")
        assert int(during.headers["Retry-After"]) >= 1
        assert during.json()["code"] == "service_unavailable"

        postgres.start()
        deadline = time.monotonic() + 30
        while (after := httpx.post(events, json=note, headers=headers, timeout=20)).status_code != 201:
            assert after.status_code == 503 and time.monotonic() < deadline, after.text[:500]
            time.sleep(0.2)
    finally:
        web.stop()
