"""Flower, started against this run's vhost beside a real worker with task events on, lists a task the test sent.

Flower reads the workers' task events (``TASK_EVENTS``, off by default:
docs/architecture.md, "Task events and Flower"); this worker is started with
them on. The check is made twice: Flower's JSON API and its tasks page in the
system Chromium, whose screenshot is kept as an artifact
(``$TEST_ARTIFACTS_DIR`` or the test's tmp directory).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from django.conf import settings
from kombu import Connection, Producer

from apps.eventbus.queues import declare_topology
from tests.integration.workers.conftest import Starter, probe_key, wait_for
from tests.support.processes import REPO_ROOT, child_env
from tests.support.services import free_port, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


@pytest.fixture
def worker(transactional_db, tmp_path) -> Iterator[object]:
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)
    starter = Starter(tmp_path)
    yield starter("worker", name="flower-w", queues="ai.batch", env={"TASK_EVENTS": "true"})
    starter.stop_all()


@pytest.fixture
def flower(worker, tmp_path) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path / "flower.log"
    env = child_env(TASK_EVENTS="true", FLOWER_UNAUTHENTICATED_API="true")
    cmd = [sys.executable, "-m", "celery", "-A", "project", "flower", "--address=127.0.0.1", f"--port={port}"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        print(log_path.read_text(errors="replace")[-3000:])


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a local test server
        return json.loads(response.read())


def _send_record(tag: str) -> str:
    from apps.eventbus.messages import build_task_message

    task_id = str(uuid.uuid4())
    msg = build_task_message("test.record", {"tag": tag, "item": "seen"}, correlation_id="flower", task_id=task_id)
    with Connection(settings.BROKER_URL, transport_options={"confirm_publish": True}) as conn:
        Producer(conn.default_channel).publish(
            msg.body, exchange=msg.exchange, routing_key=msg.routing_key, headers=msg.headers, **msg.properties
        )
    return task_id


def test_flower_lists_a_task_the_worker_ran(flower, browser, artifacts):
    import redis

    rds = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    # given Flower knows the worker (it learns it from the worker's events and inspect replies)
    wait_for(lambda: "flower-w@" in json.dumps(_get_json(f"{flower}/api/workers?refresh=1")), timeout=60)

    # when a task is sent and runs
    task_id = _send_record("flower")
    wait_for(lambda: rds.sismember(probe_key("flower", "done"), "seen"), message="task ran")

    # then Flower's API lists it as succeeded
    def flower_task() -> dict | None:
        tasks = _get_json(f"{flower}/api/tasks")
        return tasks.get(task_id) if isinstance(tasks, dict) else None

    seen = wait_for(lambda: (flower_task() or {}).get("state") == "SUCCESS" and flower_task(), timeout=30)
    assert seen["name"] == "test.record"

    # and its tasks page shows it in a real browser
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{flower}/tasks")
    page.wait_for_selector(f"text={task_id}")
    shot = artifacts / "flower-tasks.png"
    page.screenshot(path=str(shot), full_page=True)
    assert "test.record" in page.content()
    page.close()
    rds.close()
    assert shot.stat().st_size > 0
