"""Canary REST API: validation, permissions, status shape (the real run is in tests/integration/workers)."""

from __future__ import annotations

import time
import uuid

from django.conf import settings
from kombu import Connection

from apps.eventbus.queues import Queue, declare_topology, work_queue
from apps.ops.models import CanaryRun

URL = "/api/v1/ops/canary/"


def test_canary_is_for_operators_only(api_client, client) -> None:
    assert api_client.post(URL, {"mode": "ok"}, format="json").status_code == 403
    assert client.post(URL, {"mode": "ok"}, format="json").status_code == 401
    assert not CanaryRun.objects.exists()


def test_bad_canary_requests_change_nothing(api_client_for, staff_user) -> None:
    client = api_client_for(staff_user)
    for body in ({"mode": "explode"}, {}, {"mode": "ok", "extra": 1}, ["ok"]):
        response = client.post(URL, body, format="json")
        assert response.status_code == 400, body
        assert response.json()["code"] == "invalid"
    assert client.post(URL, "not json", content_type="application/json").status_code == 400
    assert not CanaryRun.objects.exists()
    missing = client.get(f"{URL}{uuid.uuid4()}/")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_canary_is_sent_after_commit_to_the_maintenance_queue(
    api_client_for, staff_user, django_capture_on_commit_callbacks
) -> None:
    client = api_client_for(staff_user)
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)
        conn.default_channel.queue_purge("maintenance")
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(URL, {"mode": "ok"}, format="json")
        assert response.status_code == 201
        body = response.json()
        assert body["status"] == "pending" and body["mode"] == "ok" and body["dead_letter"] is None
        bound = work_queue(Queue.MAINTENANCE)(conn.default_channel)
        message = None
        deadline = time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = bound.get(no_ack=False, accept=["json"])
            time.sleep(0.05)
        assert message is not None
        try:
            assert message.headers["task"] == "ops.canary"
            assert message.headers["id"] == body["task_id"]
            assert message.payload[1] == {"canary_id": body["id"], "mode": "ok"}
            assert message.headers["ce_correlation_id"]
        finally:
            message.ack()
    detail = client.get(f"{URL}{body['id']}/").json()
    assert detail["id"] == body["id"] and detail["status"] == "pending"
