"""WebSocket side of observability on a real uvicorn instance: connection/frame metrics and the correlation id."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from django.conf import settings
from kombu import Connection, Exchange
from kombu import Queue as KombuQueue
from websockets.sync.client import connect

from apps.eventbus.queues import declare_topology
from tests.support.haproxy import REPO_ROOT
from tests.support.metrics import metric_sum

pytestmark = [pytest.mark.integration]


@pytest.fixture
def relay(transactional_db, subprocess_env, tmp_path) -> Iterator[None]:
    log = (tmp_path / "relay.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_outbox_relay"],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    yield
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_websocket_connections_and_frames_are_counted(lb, web_pair, transactional_db, user, session_factory):
    from rest_framework.authtoken.models import Token

    web = web_pair[0]
    base = f"http://127.0.0.1:{web.port}"
    token = Token.objects.create(user=user).key
    session = session_factory()
    before = httpx.get(f"{base}/metrics", timeout=30).text

    with connect(f"ws://127.0.0.1:{web.port}/ws/sessions/{session.id}/?token={token}", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        ws.send(json.dumps({"type": "ping", "t": 1}))
        while json.loads(ws.recv(timeout=10))["type"] != "pong":
            pass
        during = httpx.get(f"{base}/metrics", timeout=30).text
    time.sleep(1.0)
    after = httpx.get(f"{base}/metrics", timeout=30).text

    assert metric_sum(during, "ce_websocket_connections") == metric_sum(before, "ce_websocket_connections") + 1
    assert metric_sum(after, "ce_websocket_connections") == metric_sum(before, "ce_websocket_connections")
    for direction, kind in (("out", "hello"), ("in", "ping"), ("out", "pong")):
        assert (
            metric_sum(during, "ce_websocket_messages_total", direction=direction, type=kind)
            >= metric_sum(before, "ce_websocket_messages_total", direction=direction, type=kind) + 1
        ), (direction, kind)


def test_websocket_frame_correlation_id_reaches_the_published_event(lb, web_pair, relay, user, session_factory):
    from rest_framework.authtoken.models import Token

    web = web_pair[0]
    token = Token.objects.create(user=user).key
    session = session_factory()
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)
        tap = KombuQueue(
            "ops-test-ws-tap",
            exchange=Exchange("events", type="topic"),
            routing_key="context.updated",
            exclusive=True,
            auto_delete=True,
        )
        tap(conn.default_channel).declare()

        with connect(f"ws://127.0.0.1:{web.port}/ws/sessions/{session.id}/?token={token}", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            ws.send(
                json.dumps(
                    {
                        "type": "context_update",
                        "data": {"text": "from the socket"},
                        "client_msg_id": "m1",
                        "correlation_id": "ws-corr-42",
                    }
                )
            )
            while json.loads(ws.recv(timeout=10))["type"] != "ack":
                pass

        channel = conn.channel()
        deadline = time.monotonic() + 60
        message = None
        while message is None and time.monotonic() < deadline:
            message = channel.basic_get(queue="ops-test-ws-tap", no_ack=True)
            if message is None:
                time.sleep(0.2)
        assert message is not None, "the relay published context.updated"
        assert json.loads(message.body)["correlation_id"] == "ws-corr-42"
        assert message.properties.get("correlation_id") == "ws-corr-42"
