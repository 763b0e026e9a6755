"""Metrics and fleet figures move with real requests, tasks and dead letters.

Real processes, multi-process metrics: one uvicorn web instance, one prefork
Celery worker on ``maintenance`` and the dead-letter archiver all write to one
``PROMETHEUS_MULTIPROC_DIR``; ``/metrics`` on the web instance merges them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from apps.ops.fleet import figures as fleet
from tests.support.haproxy import REPO_ROOT, WebInstance
from tests.support.metrics import metric_sum

pytestmark = [pytest.mark.integration]


def _wait(predicate: Callable[[], object], *, timeout: float = 60.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def live_fleet(transactional_db, subprocess_env, tmp_path) -> Iterator[dict]:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = subprocess_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    procs: list[subprocess.Popen] = []
    logs = {name: tmp_path / f"{name}.log" for name in ("worker", "archiver")}
    web = WebInstance(name="web-metrics", env=env)
    try:
        with logs["worker"].open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "project",
                        "worker",
                        "-Q",
                        "maintenance",
                        "-n",
                        "ops-m@%h",
                        "--pool",
                        "prefork",
                        "--concurrency",
                        "2",
                        "--without-mingle",
                        "--without-gossip",
                        "--loglevel",
                        "WARNING",
                    ],
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        with logs["archiver"].open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", "run_deadletter_archiver"],
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        web.start()

        def consumers() -> bool:
            counts = {q.name: q.consumers for q in fleet.broker_queue_counts(["maintenance", "maintenance.dlq"])}
            return bool(counts["maintenance"] and counts["maintenance.dlq"])

        _wait(consumers, timeout=90, what="worker and archiver consuming")
        yield {"url": f"http://127.0.0.1:{web.port}", "logs": logs}
    finally:
        web.stop()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_metrics_move_with_requests_tasks_and_dead_letters(live_fleet, staff_user):
    from rest_framework.authtoken.models import Token

    from apps.ops.deadletters.services import canary_run_create
    from apps.ops.models import CanaryRun, DeadLetter

    url = live_fleet["url"]
    token = Token.objects.create(user=staff_user).key
    auth = {"Authorization": f"Token {token}"}
    before = httpx.get(f"{url}/metrics", timeout=30).text
    assert metric_sum(before, "ce_queue_consumers", queue="maintenance") >= 1
    httpx.get(f"{url}/api/v1/ops/queues/", headers=auth, timeout=30)  # first sample for the rates

    ok = canary_run_create(mode="ok", user=None)
    canary_run_create(mode="fail", user=None)
    _wait(lambda: CanaryRun.objects.get(pk=ok.pk).status == "succeeded", what="canary ok to succeed")
    _wait(lambda: DeadLetter.objects.filter(queue="maintenance").exists(), what="the failing canary's dead letter")
    for _ in range(3):
        httpx.get(f"{url}/api/v1/sessions/", headers=auth, timeout=30)

    after = httpx.get(f"{url}/metrics", timeout=30).text
    labels = {"task": "ops.canary", "queue": "maintenance"}
    assert metric_sum(after, "ce_tasks_total", outcome="success", **labels) >= 1, after
    assert metric_sum(after, "ce_tasks_total", outcome="rejected", **labels) >= 1
    assert metric_sum(after, "ce_task_duration_seconds_count", **labels) >= 2
    assert metric_sum(after, "ce_task_queue_wait_seconds_count", queue="maintenance") >= 2
    reason = DeadLetter.objects.filter(queue="maintenance").first().reason
    assert metric_sum(after, "ce_dead_letters_total", queue="maintenance", reason=reason) >= 1
    assert metric_sum(after, "ce_http_request_duration_seconds_count", route="api/v1/sessions/", status="200") >= 3
    assert metric_sum(after, "ce_dead_letters_total", queue="maintenance", reason=reason) > metric_sum(
        before, "ce_dead_letters_total", queue="maintenance", reason=reason
    )

    ready = httpx.get(f"{url}/readyz?workers=1", timeout=30)
    assert ready.status_code == 200, ready.text
    assert any(node.startswith("ops-m@") for node in ready.json()["checks"]["workers"]["detail"])

    time.sleep(1.1)
    report = httpx.get(f"{url}/api/v1/ops/report/", headers=auth, timeout=30).json()
    queues = {q["name"]: q for q in report["queues"]}
    assert queues["maintenance"]["started_total"] >= 2
    assert queues["maintenance"]["rate_out"] > 0
    assert queues["maintenance.dlq"]["consumers"] == 1
    maintenance = next(r for r in report["recommendations"] if r["queue"] == "maintenance")
    # Two pool slots, almost no load: the report says fewer.
    assert maintenance["current_workers"] == 2
    assert (maintenance["recommended_workers"], maintenance["action"]) == (1, "scale_down")
    assert any(w["name"].startswith("ops-m@") for w in report["workers"])
