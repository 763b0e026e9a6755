"""The operator console in Django admin: what each operator may see and do, on the real database and broker."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.utils import timezone
from kombu import Connection

from apps.ai.models import ModelVersion
from apps.batch.models import JobRun
from apps.eventbus.queues import declare_topology
from apps.ops.models import DeadLetter, DeadLetterReplay, DeadLetterStatus
from tests.apps.ops.test_dead_letters_api import _purge_work_queues, archive  # noqa: F401 - the autouse purge

pytestmark = pytest.mark.django_db

URL = "/admin/ops/console/"


@pytest.fixture(autouse=True)
def _topology() -> None:
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)


@pytest.fixture
def operator(make_user):
    user = make_user("console_operator")
    user.is_staff = True
    user.save()
    user.groups.add(Group.objects.get(name=settings.OPS_OPERATORS_GROUP))
    return user


@pytest.fixture
def viewer(make_user):
    """Staff who may look at the fleet and the dead letters, and change nothing."""
    user = make_user("console_viewer")
    user.is_staff = True
    user.save()
    for codename in ("view_fleet", "view_deadletter", "view_modelversion", "view_jobrun"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def _get(client, user) -> str:
    client.force_login(user)
    response = client.get(URL)
    assert response.status_code == 200
    return response.content.decode()


def test_the_admin_index_links_the_console_and_the_fleet_page(client, operator):
    client.force_login(operator)
    page = client.get("/admin/").content.decode()
    assert 'href="/admin/ops/console/"' in page and 'href="/admin/ops/fleet/"' in page


def test_only_operators_see_it(client, make_user):
    assert client.get(URL).status_code == 302  # to the admin login
    staff = make_user("plain_staff")
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
    assert client.get(URL).status_code == 403


def test_dead_letters_are_grouped_by_fingerprint_and_a_group_is_replayed_in_bulk(client, operator):
    same = [archive(task_name="test.console_same", queue="ai.batch", failure=_failure("boom")) for _ in range(3)]
    other = archive(task_name="test.console_other", queue="ai.batch", failure=_failure("else"))
    page = _get(client, operator)
    groups = re.findall(r'class="dead-letter-group" data-fingerprint="(\w+)"', page)
    assert set(groups) == {same[0].fingerprint, other.fingerprint}
    assert len({d.fingerprint for d in same}) == 1

    response = client.post("/admin/ops/console/replay/", {"fingerprint": same[0].fingerprint})
    assert response.status_code == 302
    assert DeadLetterReplay.objects.filter(dead_letter__in=same).count() == 3
    assert DeadLetter.objects.get(pk=other.pk).status == DeadLetterStatus.NEW
    with Connection(settings.BROKER_URL) as conn:
        assert conn.default_channel.queue_declare(queue="ai.batch", passive=True).message_count == 3


def test_a_viewer_sees_everything_and_can_replay_or_promote_nothing(client, viewer):
    row = archive(task_name="test.console_view", queue="ai.batch", failure=_failure("boom"))
    version = ModelVersion.objects.create(name="next_action", version=1, metrics={"top1": 0.5})
    page = _get(client, viewer)
    assert row.fingerprint in page
    assert "/admin/ops/console/replay/" not in page and "/admin/ops/console/models/" not in page  # no action forms
    assert client.post("/admin/ops/console/replay/", {"fingerprint": row.fingerprint}).status_code == 403
    assert (
        client.post("/admin/ops/console/models/", {"action": "promote", "model_version_id": version.pk}).status_code
        == 403
    )
    assert not DeadLetterReplay.objects.exists()
    version.refresh_from_db()
    assert version.promoted is False


def test_model_versions_side_by_side_with_promote_and_rollback(client, operator):
    v1 = ModelVersion.objects.create(name="next_action", version=1, metrics={"top1": 0.41, "topk": 0.7})
    v2 = ModelVersion.objects.create(name="next_action", version=2, metrics={"top1": 0.52, "topk": 0.8})
    page = _get(client, operator)
    assert "<th>top1</th>" in page and "0.4100" in page and "0.5200" in page
    for version in (v1, v2):
        client.post("/admin/ops/console/models/", {"action": "promote", "model_version_id": version.pk})
    assert list(ModelVersion.objects.filter(promoted=True).values_list("version", flat=True)) == [2]
    client.post("/admin/ops/console/models/", {"action": "rollback", "name": "next_action"})
    assert list(ModelVersion.objects.filter(promoted=True).values_list("version", flat=True)) == [1]


def test_job_runs_show_their_progress(client, operator):
    JobRun.objects.create(
        job_name="embedding_backfill", progress_done=25, progress_total=100, started_at=timezone.now()
    )
    page = _get(client, operator)
    assert "embedding_backfill" in page and "25 / 100" in page and "width: 25%" in page


def test_a_training_run_shows_its_epoch_and_latest_loss(client, operator):
    # Given a training run that reported epoch 2 of 8 (as workers/training/jobs.py does)
    JobRun.objects.create(
        job_name="train_next_action",
        started_at=timezone.now(),
        progress_detail={
            "unit": "epoch",
            "done": 2,
            "total": 8,
            "phase": "training",
            "loss": 1.23456,
            "elapsed_s": 3.21,
        },
    )

    # Then the console shows the epoch as the progress bar, with the latest loss and the time so far
    page = _get(client, operator)
    assert "width: 25%" in page and "epoch 2 / 8" in page
    assert '<span class="loss">loss 1.2346</span>' in page and "3.2 s" in page


def test_queue_charts_draw_from_the_fleet_samples_and_the_advice_shows_its_arithmetic(client, operator):
    _get(client, operator)  # each read stores a sample
    page = _get(client, operator)
    charts = re.findall(r'<div class="chart" data-queue="([\w.]+)">', page)
    assert "ai.realtime" in charts and "ai.batch" in charts
    assert re.search(r'<polyline class="s0" points="[\d., ]+"', page)
    assert re.search(r'<tr class="advice" data-queue="ai.realtime">', page)
    assert "a = λ·S" in page


def _failure(message: str) -> dict:
    return {
        "exception_class": "PermanentError",
        "exception_message": message,
        "traceback": f"Traceback (most recent call last):\nPermanentError: {message}\n",
        "attempts": 1,
        "reason": "rejected",
    }
