"""Ops endpoints are checked against Django permissions, not bare ``is_staff``.

Reading (dead letters, canary runs, queue figures, the admin fleet page) needs
``view_*``; replay, discard, bulk replay and starting a canary need
``change_*``. A staff user without the permission gets 403 and nothing
changes: no replay row, no status change, no message on the broker, no canary
run. The ``operators`` group holds every permission, and
``manage.py create_api_token USER --staff`` makes a user who can use them all.

The permission matrix goes through Django's test client (the views, the
permission classes and the real database and broker are the ones the server
runs); replays publish to this run's real RabbitMQ vhost.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from kombu import Connection
from rest_framework.test import APIClient

from apps.eventbus.queues import Queue, declare_topology
from apps.ops.deadletters import services
from apps.ops.models import CanaryRun, DeadLetter, DeadLetterReplay

pytestmark = pytest.mark.django_db

OPERATORS = "operators"
VIEW = ("view_deadletter", "view_canaryrun", "view_fleet")
CHANGE = ("change_deadletter", "change_canaryrun")


@pytest.fixture(autouse=True)
def topology() -> Iterator[None]:
    """Queues declared (the fleet endpoints read them); replayed messages purged afterwards."""
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)
    yield
    with Connection(settings.BROKER_URL) as conn:
        for queue in Queue:
            conn.default_channel.queue_purge(queue.value)


def _depth(queue: str) -> int:
    with Connection(settings.BROKER_URL) as conn:
        return conn.default_channel.queue_declare(queue=queue, passive=True).message_count


def _dead_letter() -> DeadLetter:
    task_id = str(uuid.uuid4())
    headers = {
        "task": "test.permissions",
        "id": task_id,
        "root_id": task_id,
        "retries": 0,
        "x-death": [{"count": 1, "reason": "rejected", "queue": "ai.batch", "exchange": "tasks"}],
    }
    dead_letter, _ = services.dead_letter_archive(
        dead_letter_queue="ai.batch.dlq",
        body=b'[[], {"n": 1}, {}]',
        headers=headers,
        properties={"content_type": "application/json"},
    )
    return dead_letter


def _staff(username: str, *codenames: str) -> object:
    """A staff user (not a superuser) holding exactly ``codenames`` of the ops app."""
    user = get_user_model().objects.create_user(username=username, password="pw-Secret-123", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="ops", codename__in=codenames))
    return user


def _client(user) -> APIClient:
    from rest_framework.authtoken.models import Token

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def _reads(dead_letter_id, canary_id) -> list[tuple[str, str]]:
    return [
        ("/api/v1/dead-letters/", "list"),
        (f"/api/v1/dead-letters/{dead_letter_id}/", "detail"),
        (f"/api/v1/ops/canary/{canary_id}/", "canary detail"),
        ("/api/v1/ops/queues/", "queues"),
        ("/api/v1/ops/report/", "report"),
    ]


def _changes(dead_letter_id) -> list[tuple[str, dict]]:
    return [
        (f"/api/v1/dead-letters/{dead_letter_id}/replay/", {}),
        (f"/api/v1/dead-letters/{dead_letter_id}/discard/", {}),
        ("/api/v1/dead-letters/replay/", {"task_name": "test.permissions"}),
        ("/api/v1/ops/canary/", {"mode": "ok"}),
    ]


def _state(dead_letter: DeadLetter) -> tuple:
    dead_letter.refresh_from_db()
    return (dead_letter.status, DeadLetterReplay.objects.count(), CanaryRun.objects.count(), _depth("ai.batch"))


def _canary() -> CanaryRun:
    return CanaryRun.objects.create(mode="ok")


def test_staff_without_ops_permissions_is_refused_everywhere_and_nothing_changes():
    # given a staff user who holds no ops permission, a new dead letter and a canary run
    dead_letter, canary = _dead_letter(), _canary()
    client = _client(_staff("plain-staff"))
    before = _state(dead_letter)

    # when they read and change through every ops endpoint
    answers = {path: client.get(path).status_code for path, _ in _reads(dead_letter.id, canary.id)}
    answers |= {path: client.post(path, body, format="json").status_code for path, body in _changes(dead_letter.id)}

    # then every answer is 403 and nothing changed
    assert answers == dict.fromkeys(answers, 403)
    assert _state(dead_letter) == before == ("new", 0, 1, 0)


def test_view_permissions_read_but_do_not_replay_discard_or_start_a_canary():
    dead_letter, canary = _dead_letter(), _canary()
    client = _client(_staff("viewer", *VIEW))
    before = _state(dead_letter)

    reads = {path: client.get(path).status_code for path, _ in _reads(dead_letter.id, canary.id)}
    changes = {path: client.post(path, body, format="json") for path, body in _changes(dead_letter.id)}

    assert reads == dict.fromkeys(reads, 200)
    assert {path: r.status_code for path, r in changes.items()} == dict.fromkeys(changes, 403)
    assert all(r.json()["code"] == "permission_denied" for r in changes.values())
    assert _state(dead_letter) == before


def test_change_permissions_without_view_permissions_cannot_read():
    dead_letter, canary = _dead_letter(), _canary()
    client = _client(_staff("writer", *CHANGE))

    reads = {path: client.get(path).status_code for path, _ in _reads(dead_letter.id, canary.id)}

    assert reads == dict.fromkeys(reads, 403)


def test_change_deadletter_is_what_replay_needs():
    dead_letter = _dead_letter()
    client = _client(_staff("replayer", "change_deadletter"))

    response = client.post(f"/api/v1/dead-letters/{dead_letter.id}/replay/", {}, format="json")

    assert response.status_code == 201, response.json()
    assert _state(dead_letter)[:2] == ("replayed", 1)
    assert _depth("ai.batch") == 1


def test_the_operators_group_holds_every_ops_permission():
    assert Group.objects.filter(name=OPERATORS).exists(), "a data migration creates the operators group"
    held = set(Group.objects.get(name=OPERATORS).permissions.values_list("content_type__app_label", "codename"))
    assert {("ops", codename) for codename in VIEW + CHANGE} <= held


def _every_endpoint_works_for(client: APIClient) -> dict[str, int]:
    dead_letter, other, canary = _dead_letter(), _dead_letter(), _canary()
    answers = {path: client.get(path).status_code for path, _ in _reads(dead_letter.id, canary.id)}
    answers["replay"] = client.post(f"/api/v1/dead-letters/{dead_letter.id}/replay/", {}, format="json").status_code
    answers["discard"] = client.post(f"/api/v1/dead-letters/{other.id}/discard/", {}, format="json").status_code
    answers["bulk"] = client.post(
        "/api/v1/dead-letters/replay/", {"task_name": "test.permissions", "force": True}, format="json"
    ).status_code
    answers["canary"] = client.post("/api/v1/ops/canary/", {"mode": "ok"}, format="json").status_code
    return answers


def test_a_staff_member_of_the_operators_group_can_use_every_ops_endpoint():
    assert Group.objects.filter(name=OPERATORS).exists(), "a data migration creates the operators group"
    user = _staff("grouped")
    user.groups.add(Group.objects.get(name=OPERATORS))

    answers = _every_endpoint_works_for(_client(user))

    assert answers == {**dict.fromkeys(answers, 200), "replay": 201, "canary": 201}


def test_create_api_token_staff_makes_an_operator_who_can_use_every_ops_endpoint():
    out = io.StringIO()
    call_command("create_api_token", "ops-bot", "--staff", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    user = get_user_model().objects.get(username="ops-bot")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")

    answers = _every_endpoint_works_for(client)

    assert user.is_staff and user.groups.filter(name=OPERATORS).exists()
    assert answers == {**dict.fromkeys(answers, 200), "replay": 201, "canary": 201}


def test_admin_fleet_page_needs_the_view_fleet_permission(client):
    client.force_login(_staff("staff-no-fleet"))
    assert client.get("/admin/ops/fleet/").status_code == 403

    client.force_login(_staff("staff-fleet", "view_fleet"))
    assert client.get("/admin/ops/fleet/").status_code == 200


def test_admin_replay_and_discard_actions_need_the_change_permission(client):
    # given a staff user who may look at dead letters in the admin but not change them
    dead_letter = _dead_letter()
    client.force_login(_staff("admin-viewer", "view_deadletter"))
    before = _state(dead_letter)
    changelist = "/admin/ops/deadletter/"
    assert client.get(changelist).status_code == 200

    # when they post each bulk action on it
    for action in ("replay_selected", "force_replay_selected", "discard_selected"):
        client.post(changelist, {"action": action, "_selected_action": [str(dead_letter.id)]})

    # then none ran
    assert _state(dead_letter) == before == ("new", 0, 0, 0)
