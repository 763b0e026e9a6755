"""One correlation id from a REST call through the outbox, the relay, a subscriber and the AI task message.

Real relay and subscriber processes on this run's vhost; the test reads what
reached RabbitMQ. (The task base class restoring the id around the task, and so
on the broadcast it makes, is tested with the workers.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from kombu import Connection, Exchange
from kombu import Queue as KombuQueue

from apps.eventbus.queues import Queue, declare_topology
from tests.support.haproxy import REPO_ROOT

pytestmark = [pytest.mark.integration]


@pytest.fixture
def relay_and_subscribers(transactional_db, subprocess_env, tmp_path) -> Iterator[None]:
    procs = []
    for command in ("run_outbox_relay", "run_event_subscribers"):
        log = (tmp_path / f"{command}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "manage.py", command],
                cwd=REPO_ROOT,
                env=subprocess_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _get(conn: Connection, queue: str, *, timeout: float = 60.0, match=lambda m: True):
    deadline = time.monotonic() + timeout
    channel = conn.channel()
    while time.monotonic() < deadline:
        message = channel.basic_get(queue=queue, no_ack=True)
        if message is not None and match(message):
            return message
        if message is None:
            time.sleep(0.2)
    raise AssertionError(f"no matching message on {queue} within {timeout}s")


def test_rest_correlation_id_reaches_the_event_and_the_ai_task(client, user, session_factory, relay_and_subscribers):
    cid = "corr-e2e-0001"
    session = session_factory()
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)
        tap = KombuQueue(
            "ops-test-tap",
            exchange=Exchange("events", type="topic"),
            routing_key="context.updated",
            exclusive=True,
            auto_delete=True,
        )
        tap(conn.default_channel).declare()
        client.force_login(user)

        response = client.post(
            f"/api/v1/sessions/{session.id}/events/",
            {"event_type": "context_update", "data": {"text": "ship the release notes"}},
            content_type="application/json",
            HTTP_X_CORRELATION_ID=cid,
        )

        assert response.status_code == 201, response.content
        assert response["X-Correlation-ID"] == cid
        event = _get(conn, "ops-test-tap")
        body = json.loads(event.body)
        assert body["correlation_id"] == cid
        assert event.properties.get("correlation_id") == cid
        task = _get(conn, Queue.AI_REALTIME.value, match=lambda m: m.headers.get("task") == "ai.generate_suggestions")
        assert task.headers["ce_correlation_id"] == cid
