"""Fleet control over REST and admin: who may act, what a purge needs, what is audited (no worker running).

The real-worker behaviour (revoke, pause across a restart, resume, retry listing)
is in tests/integration/workers/test_fleet_control.py.
"""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from kombu import Connection

from apps.eventbus.queues import TASKS_EXCHANGE, Queue, declare_topology
from apps.ops.fleet import delayed
from apps.ops.fleet import figures as fleet
from apps.ops.models import FleetAction, PausedQueue

pytestmark = pytest.mark.django_db

ACTIONS = [
    ("post", "/api/v1/ops/tasks/some-task-id/revoke/", {}),
    ("post", "/api/v1/ops/queues/ai.batch/pause/", {}),
    ("post", "/api/v1/ops/queues/ai.batch/resume/", {}),
    ("post", "/api/v1/ops/queues/ai.batch/purge/", {"confirm": "ai.batch"}),
]
READS = ["/api/v1/ops/tasks/", "/api/v1/ops/queues/paused/", "/api/v1/ops/actions/"]


@pytest.fixture
def topology():
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)
        conn.default_channel.queue_purge(Queue.AI_BATCH.value)
        yield conn
        conn.default_channel.queue_purge(Queue.AI_BATCH.value)


def _publish(conn: Connection, n: int) -> None:
    producer = conn.Producer()
    for i in range(n):
        producer.publish({"n": i}, exchange=TASKS_EXCHANGE, routing_key=Queue.AI_BATCH.value, serializer="json")


def _depth(queue: str = Queue.AI_BATCH.value) -> int | None:
    return fleet.broker_queue_counts([queue])[0].depth


def _wait_depth(n: int) -> None:
    deadline = time.monotonic() + 10
    while _depth() != n:
        assert time.monotonic() < deadline, f"ai.batch never reached depth {n}"
        time.sleep(0.05)


@pytest.fixture
def viewer(make_user):
    """Staff with the fleet's view permission only."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username="viewer", password="pw-Secret-123", is_staff=True)
    user.user_permissions.add(Permission.objects.get(content_type__app_label="ops", codename="view_fleet"))
    return user


@pytest.fixture
def operator():
    """Staff with ``ops.view_fleet`` and ``ops.change_fleet`` (not a superuser)."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username="fleet_op", password="pw-Secret-123", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="ops", codename__in=["view_fleet", "change_fleet"])
    )
    return user


@pytest.mark.parametrize(("method", "path", "body"), ACTIONS)
def test_outsiders_and_viewers_get_403_and_nothing_changes(api_client_for, user, viewer, topology, method, path, body):
    _publish(topology, 2)
    _wait_depth(2)
    if "resume" in path:
        PausedQueue.objects.create(queue="ai.batch")

    for who in (user, viewer):
        response = getattr(api_client_for(who), method)(path, body, format="json")
        assert response.status_code == 403, (who.username, response.content)

    assert FleetAction.objects.count() == 0
    assert PausedQueue.objects.count() == (1 if "resume" in path else 0)
    assert _depth() == 2


def test_actions_need_authentication(client):
    for _method, path, body in ACTIONS:
        assert client.post(path, body, content_type="application/json").status_code in (401, 403)


def test_viewers_read_tasks_paused_queues_and_the_audit(api_client_for, viewer, user):
    for path in READS:
        assert api_client_for(viewer).get(path).status_code == 200, path
        assert api_client_for(user).get(path).status_code == 403, path


def test_the_operators_group_holds_the_change_permission():
    from django.contrib.auth.models import Group

    group = Group.objects.get(name=settings.OPS_OPERATORS_GROUP)
    assert group.permissions.filter(content_type__app_label="ops", codename="change_fleet").exists()


def test_purge_deletes_only_after_the_queue_name_is_repeated(api_client_for, operator, topology):
    _publish(topology, 3)
    _wait_depth(3)
    client = api_client_for(operator)

    for body in ({}, {"confirm": ""}, {"confirm": "ai.realtime"}, {"confirm": "AI.BATCH"}):
        response = client.post("/api/v1/ops/queues/ai.batch/purge/", body, format="json")
        assert response.status_code == 400, body
        assert response.json()["code"] == "confirmation_required"
    assert _depth() == 3
    assert FleetAction.objects.count() == 0

    response = client.post("/api/v1/ops/queues/ai.batch/purge/", {"confirm": "ai.batch"}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["result"] == {"purged": 3}
    assert _depth() == 0
    row = FleetAction.objects.get()
    assert (row.action, row.target, row.requested_by) == ("purge", "ai.batch", operator)


def test_only_work_queues_can_be_paused_or_purged(api_client_for, operator):
    client = api_client_for(operator)

    assert client.post("/api/v1/ops/queues/ai.batch.dlq/pause/", {}, format="json").status_code == 400
    assert (
        client.post("/api/v1/ops/queues/events.activity/purge/", {"confirm": "events.activity"}, format="json")
    ).status_code == 400
    assert FleetAction.objects.count() == 0


def test_pause_and_resume_are_stored_and_audited(api_client_for, operator, topology):
    client = api_client_for(operator)

    paused = client.post("/api/v1/ops/queues/ai.training/pause/", {"reason": "bad model"}, format="json")
    again = client.post("/api/v1/ops/queues/ai.training/pause/", {}, format="json")
    listed = client.get("/api/v1/ops/queues/paused/").json()
    resumed = client.post("/api/v1/ops/queues/ai.training/resume/", {}, format="json")
    resumed_again = client.post("/api/v1/ops/queues/ai.training/resume/", {}, format="json")

    assert paused.status_code == 201, paused.content
    assert again.status_code == 409
    assert [(p["queue"], p["paused_by"], p["reason"]) for p in listed] == [("ai.training", "fleet_op", "bad model")]
    assert resumed.status_code == 201
    assert resumed_again.status_code == 409
    assert not PausedQueue.objects.exists()
    actions = client.get("/api/v1/ops/actions/").json()
    assert [(a["action"], a["target"], a["requested_by"]) for a in actions] == [
        ("resume", "ai.training", "fleet_op"),
        ("pause", "ai.training", "fleet_op"),
    ]


def test_revoke_is_audited_with_its_options(api_client_for, operator, topology):
    response = api_client_for(operator).post(
        "/api/v1/ops/tasks/0b7c6d5e-task/revoke/", {"terminate": True, "signal": "SIGKILL"}, format="json"
    )

    assert response.status_code == 201, response.content
    row = FleetAction.objects.get()
    assert (row.action, row.target, row.params) == ("revoke", "0b7c6d5e-task", {"terminate": True, "signal": "SIGKILL"})
    assert row.result == {"workers": {}}  # no worker runs in this test


def test_revoke_rejects_an_unknown_signal(api_client_for, operator):
    response = api_client_for(operator).post("/api/v1/ops/tasks/x/revoke/", {"signal": "SIGSTOP"}, format="json")

    assert response.status_code == 400
    assert FleetAction.objects.count() == 0


def test_tasks_list_shows_what_waits_out_a_countdown(api_client_for, viewer):
    eta = time.time() + 30
    delayed.delayed_record(
        headers={"id": "t-delayed", "task": "test.flaky", "eta": _iso(eta), "retries": 1},
        exchange=delayed.DELAYED_EXCHANGE,
        routing_key=".".join(["0"] * 27 + ["1", "ai.batch"]),
    )
    try:
        body = api_client_for(viewer).get("/api/v1/ops/tasks/").json()
    finally:
        delayed.delayed_forget("t-delayed")

    rows = [t for t in body["results"] if t["id"] == "t-delayed"]
    assert len(rows) == 1
    assert (rows[0]["state"], rows[0]["name"], rows[0]["queue"], rows[0]["retries"]) == (
        "delayed",
        "test.flaky",
        "ai.batch",
        1,
    )


def test_stale_ledger_entries_are_dropped_when_read():
    delayed.delayed_record(
        headers={"id": "t-stale", "task": "x", "eta": _iso(time.time() - delayed.STALE_AFTER_S - 5)},
        exchange="tasks",
        routing_key="ai.batch",
    )

    assert "t-stale" not in {e["id"] for e in delayed.delayed_entries()}
    assert "t-stale" not in {e["id"] for e in delayed.delayed_entries(include_stale=True)}


def test_queue_is_recovered_from_a_delayed_delivery_routing_key():
    key = ".".join(["1", "0"] * 14) + ".maintenance"

    assert delayed.queue_from_routing_key(key, delayed.DELAYED_EXCHANGE) == "maintenance"
    assert delayed.queue_from_routing_key("ai.realtime", "tasks") == "ai.realtime"


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


# --- admin pages ---------------------------------------------------------------------


def test_fleet_page_links_the_tasks_page(client, viewer):
    client.force_login(viewer)

    html = client.get("/admin/ops/fleet/").content.decode()

    assert 'href="/admin/ops/fleet/tasks/"' in html


def test_tasks_page_shows_controls_only_with_the_change_permission(client, viewer, operator):
    client.force_login(viewer)
    as_viewer = client.get("/admin/ops/fleet/tasks/")
    client.force_login(operator)
    as_operator = client.get("/admin/ops/fleet/tasks/")

    assert as_viewer.status_code == as_operator.status_code == 200
    assert 'value="pause"' not in as_viewer.content.decode()
    assert 'value="pause"' in as_operator.content.decode()
    assert "ai.training" in as_viewer.content.decode()


def test_admin_actions_need_the_change_permission(client, viewer):
    client.force_login(viewer)

    response = client.post("/admin/ops/fleet/action/", {"action": "pause", "queue": "ai.batch"})

    assert response.status_code == 403
    assert not PausedQueue.objects.exists()


def test_admin_purge_without_confirmation_deletes_nothing(client, operator, topology):
    _publish(topology, 2)
    _wait_depth(2)
    client.force_login(operator)

    refused = client.post("/admin/ops/fleet/action/", {"action": "purge", "queue": "ai.batch", "confirm": "x"})
    assert refused.status_code == 302
    assert _depth() == 2
    done = client.post("/admin/ops/fleet/action/", {"action": "purge", "queue": "ai.batch", "confirm": "ai.batch"})

    assert done.status_code == 302
    assert _depth() == 0
    assert FleetAction.objects.get().action == "purge"


def test_the_audit_is_readable_in_admin_and_never_editable(client, viewer, operator, api_client_for, topology):
    api_client_for(operator).post("/api/v1/ops/tasks/t-admin/revoke/", {}, format="json")
    client.force_login(viewer)

    listing = client.get("/admin/ops/fleetaction/")
    row = FleetAction.objects.get()

    assert listing.status_code == 200
    assert "t-admin" in listing.content.decode()
    assert client.post(f"/admin/ops/fleetaction/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert FleetAction.objects.filter(pk=row.pk).exists()


@pytest.fixture
def broker_down(monkeypatch):
    """Every control broadcast fails as it does when RabbitMQ is unreachable."""
    from project.celery import app

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    for name in ("broadcast", "cancel_consumer", "revoke"):
        monkeypatch.setattr(app.control, name, refuse)


def test_a_pause_the_workers_never_heard_of_is_undone(api_client_for, operator, broker_down):
    response = api_client_for(operator).post("/api/v1/ops/queues/ai.batch/pause/", {}, format="json")

    assert response.status_code == 503
    assert response.json()["code"] == "broker_unavailable"
    assert not PausedQueue.objects.exists()
    assert "error" in FleetAction.objects.get(action="pause").result


def test_a_resume_the_workers_never_heard_of_leaves_the_queue_paused(api_client_for, operator, broker_down):
    PausedQueue.objects.create(queue="ai.batch", reason="kept")

    response = api_client_for(operator).post("/api/v1/ops/queues/ai.batch/resume/", {}, format="json")

    assert response.status_code == 503
    assert PausedQueue.objects.get().reason == "kept"


def test_a_failed_revoke_is_not_applied_by_workers_starting_later(api_client_for, operator, broker_down):
    from apps.ops.fleet.consumption import recent_revoked_ids

    response = api_client_for(operator).post("/api/v1/ops/tasks/t-failed/revoke/", {}, format="json")

    assert response.status_code == 503
    assert FleetAction.objects.get().target == "t-failed"
    assert recent_revoked_ids() == []
