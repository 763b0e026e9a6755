"""/healthz and /readyz against the real shared services (the fault cases are in tests/integration/ops)."""

from __future__ import annotations

import pytest

from apps.ops import health


@pytest.fixture(autouse=True)
def _probe_connections_closed():
    """The probe keeps its own connections open (apps/ops/health.py); drop them so the test database can be."""
    yield
    health.readiness_reset()


def test_healthz_answers_without_touching_dependencies(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["instance"]


@pytest.mark.django_db
def test_readyz_is_ok_when_every_service_answers(client):
    response = client.get("/readyz")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "redis", "broker", "channel_layer"}
    assert all(check["ok"] for check in body["checks"].values())


@pytest.mark.django_db
def test_readyz_names_a_broken_part_and_answers_503(client, settings):
    from tests.support.services import free_port

    settings.BROKER_URL = f"amqp://guest:guest@127.0.0.1:{free_port()}//"

    response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"]
    assert body["code"] == "not_ready"
    assert "broker" in body["message"]
    assert body["checks"]["database"]["ok"] is True


@pytest.mark.django_db
def test_readyz_with_workers_fails_when_no_worker_answers(client):
    response = client.get("/readyz?workers=1")

    assert response.status_code == 503
    assert response.json()["failing"] == ["workers"]


def test_readyz_rejects_other_methods(client):
    assert client.post("/readyz").status_code == 405


def test_a_hanging_check_is_cut_at_the_timeout():
    import asyncio
    import time

    async def hang(timeout: float) -> None:
        await asyncio.sleep(30)

    started = time.monotonic()
    result = asyncio.run(health._run("slow", hang, 0.2, is_async=True))

    assert result.ok is False
    assert "timed out" in result.error
    assert time.monotonic() - started < 2
