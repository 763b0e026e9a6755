"""Settings: prod is deploy-clean and refuses to start half-configured; env helpers fail loudly."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from project import env
from tests.conftest import REPO_ROOT


def run_manage(*args: str, **variables: str) -> subprocess.CompletedProcess:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DJANGO_SETTINGS_MODULE": "project.settings.prod",
        "CONTEXT_ENGINE_SKIP_DOTENV": "1",  # a developer's .env must not hide a missing variable
        **variables,
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_prod_passes_check_deploy_with_no_warnings():
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="api.example.com",
        METRICS_TOKEN=secrets.token_hex(32),  # an empty one fails the deploy check (ops.E001)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_prod_refuses_to_start_without_secret_key():
    result = run_manage("check", ALLOWED_HOSTS="api.example.com")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "SECRET_KEY" in result.stderr


def test_prod_refuses_a_weak_secret_key():
    result = run_manage("check", SECRET_KEY="short", ALLOWED_HOSTS="api.example.com")
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def test_prod_requires_allowed_hosts():
    result = run_manage("check", SECRET_KEY=secrets.token_urlsafe(64))
    assert result.returncode != 0 and "ALLOWED_HOSTS" in result.stderr


def test_required_variable_missing_names_it(monkeypatch):
    monkeypatch.delenv("CE_TEST_REQUIRED", raising=False)
    with pytest.raises(ImproperlyConfigured, match="CE_TEST_REQUIRED"):
        env.get_str("CE_TEST_REQUIRED")
    monkeypatch.setenv("CE_TEST_REQUIRED", "")
    with pytest.raises(ImproperlyConfigured, match="CE_TEST_REQUIRED"):
        env.get_str("CE_TEST_REQUIRED")


@pytest.mark.parametrize(
    "getter, value, expected",
    [
        (env.get_int, "12", 12),
        (env.get_float, "2.5", 2.5),
        (env.get_bool, "yes", True),
        (env.get_bool, "off", False),
        (env.get_list, "a, b,,c", ["a", "b", "c"]),
    ],
)
def test_typed_getters_parse(monkeypatch, getter, value, expected):
    monkeypatch.setenv("CE_TEST_VALUE", value)
    assert getter("CE_TEST_VALUE") == expected


@pytest.mark.parametrize("getter, value", [(env.get_int, "ten"), (env.get_float, "x"), (env.get_bool, "maybe")])
def test_typed_getters_say_what_was_wrong(monkeypatch, getter, value):
    monkeypatch.setenv("CE_TEST_VALUE", value)
    with pytest.raises(ImproperlyConfigured, match=rf"CE_TEST_VALUE.*{value}"):
        getter("CE_TEST_VALUE")


def test_defaults_apply_when_unset(monkeypatch):
    monkeypatch.delenv("CE_TEST_VALUE", raising=False)
    assert env.get_int("CE_TEST_VALUE", 7) == 7


@pytest.mark.parametrize(
    "url, message",
    [("mysql://u@h/db", "postgres"), ("postgres://u@h:5432/", "name a database")],
)
def test_database_url_errors(url, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        env.database_from_url(url)


def test_database_url_parts():
    parsed = env.database_from_url("postgres://user:p%40ss@db.internal:6543/ce")
    assert parsed["USER"] == "user" and parsed["PASSWORD"] == "p@ss" and parsed["HOST"] == "db.internal"
    assert parsed["PORT"] == "6543" and parsed["NAME"] == "ce"
