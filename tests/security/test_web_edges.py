"""The web process's edges, on the Procfile's server (HAProxy, gunicorn, uvicorn): static files,
the API docs offline, CORS for the REST API, and probes that answer whatever Host they carry.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import auth
from tests.support.processes import REPO_ROOT, child_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ALLOWED_ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def collected_static(tmp_path_factory) -> Path:
    """``collectstatic`` into a folder of its own, as the image does at build time."""
    root = tmp_path_factory.mktemp("static")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=REPO_ROOT,
        env=child_env(STATIC_ROOT=str(root)),
        check=True,
        timeout=120,
    )
    return root


@pytest.fixture
def served(start_web, collected_static):
    # DEBUG off (the test settings) and no static finders: only what collectstatic wrote is served.
    return start_web(STATIC_ROOT=str(collected_static), WHITENOISE_USE_FINDERS="false", ALLOWED_ORIGINS=ALLOWED_ORIGIN)


def _assets(html: str) -> list[str]:
    """Every local script, stylesheet, image and icon a page references."""
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    return sorted({ref for ref in refs if ref.startswith("/static/")})


def test_the_admin_page_and_every_asset_it_references_answer_200(served):
    page = httpx.get(f"{served.http}/admin/login/", timeout=10)
    assert page.status_code == 200
    assets = _assets(page.text)
    assert any(asset.endswith(".css") for asset in assets), assets
    for asset in assets:
        response = httpx.get(f"{served.http}{asset}", timeout=10)
        assert response.status_code == 200, (asset, response.status_code)
    # cached by the browser (WhiteNoise's headers), and never from a CDN
    assert "max-age" in httpx.get(f"{served.http}{assets[0]}", timeout=10).headers.get("cache-control", "")


def test_the_api_docs_load_every_asset_from_this_server(served):
    page = httpx.get(f"{served.http}/api/docs/", timeout=10)
    assert page.status_code == 200
    assert "cdn.jsdelivr.net" not in page.text and "unpkg.com" not in page.text
    assets = _assets(page.text)
    assert any("swagger-ui" in asset for asset in assets), assets
    for asset in assets:
        response = httpx.get(f"{served.http}{asset}", timeout=10)
        assert response.status_code == 200, (asset, response.status_code)


def test_a_cors_preflight_from_an_allowed_origin_is_answered_and_others_get_no_grant(served, team):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }
    url = f"{served.http}/api/v1/sessions/{team['sid']}/events/"
    allowed = httpx.options(url, headers={"Origin": ALLOWED_ORIGIN, **preflight}, timeout=10)
    assert allowed.status_code == 200
    assert allowed.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
    granted = {h.strip().lower() for h in allowed.headers.get("access-control-allow-headers", "").split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= granted

    other = httpx.options(url, headers={"Origin": "https://evil.example", **preflight}, timeout=10)
    assert "access-control-allow-origin" not in other.headers

    # the real request from the allowed origin is readable by it, with the headers a client needs
    response = httpx.get(
        f"{served.http}/api/v1/sessions/", headers={"Origin": ALLOWED_ORIGIN, **auth(team["tokens"]["bob"])}
    )
    assert response.status_code == 200
    assert response.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
    assert "x-correlation-id" in response.headers.get("access-control-expose-headers", "").lower()


def test_probes_answer_a_pod_ip_host_and_other_paths_still_refuse_it(served):
    pod_ip = {"Host": "10.244.3.17:8000"}
    assert httpx.get(f"{served.http}/healthz", headers=pod_ip, timeout=10).status_code == 200
    ready = httpx.get(f"{served.http}/readyz", headers=pod_ip, timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ok"
    assert httpx.get(f"{served.http}/api/v1/sessions/", headers=pod_ip, timeout=10).status_code == 400
    assert httpx.get(f"{served.http}/admin/login/", headers=pod_ip, timeout=10).status_code == 400


def test_database_url_query_options_reach_the_driver():
    from project import env

    config = env.database_from_url("postgres://app:s%40cret@db.internal:6543/ce?sslmode=require&connect_timeout=3")
    assert (config["USER"], config["PASSWORD"], config["HOST"], config["PORT"], config["NAME"]) == (
        "app",
        "s@cret",
        "db.internal",
        "6543",
        "ce",
    )
    assert config["OPTIONS"]["sslmode"] == "require"
