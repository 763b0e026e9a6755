"""``manage.py task_dead_letters list|replay|discard``: the operator API's services from the shell, audited."""

from __future__ import annotations

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from kombu import Connection

from apps.eventbus.queues import declare_topology
from apps.ops.models import DeadLetter, DeadLetterReplay, DeadLetterStatus, ReplayStatus
from tests.apps.ops.test_dead_letters_api import _purge_work_queues, archive  # noqa: F401 - the autouse purge

pytestmark = pytest.mark.django_db


@pytest.fixture
def topology() -> None:
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)


def _run(*args: str) -> str:
    out = StringIO()
    call_command("task_dead_letters", *args, stdout=out)
    return out.getvalue()


def _take(queue: str) -> list[object]:
    with Connection(settings.BROKER_URL) as conn:
        channel = conn.default_channel
        taken = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            taken.append(message)
        return taken


def test_list_shows_task_dead_letters_with_their_ids_and_filters(topology):
    batch = archive(task_name="test.cmd_a", queue="ai.batch")
    realtime = archive(task_name="test.cmd_b", queue="ai.realtime")
    out = _run("list")
    assert str(batch.id) in out and str(realtime.id) in out and "2 shown" in out
    filtered = _run("list", "--queue", "ai.realtime")
    assert str(realtime.id) in filtered and str(batch.id) not in filtered
    assert "no dead-lettered tasks match" in _run("list", "--task", "nothing.like.this")


def test_replay_publishes_once_audited_and_refuses_a_second_time_unless_forced(topology, staff_user):
    row = archive(task_name="test.cmd_replay", queue="ai.batch")
    _take("ai.batch")
    out = _run("replay", str(row.id), "--user", staff_user.username)
    replay = DeadLetterReplay.objects.get(dead_letter=row)
    assert (replay.status, replay.requested_by_id) == (ReplayStatus.PUBLISHED, staff_user.pk)
    assert str(replay.new_task_id) in out
    [message] = _take("ai.batch")
    assert message.headers["task"] == "test.cmd_replay"
    with pytest.raises(CommandError, match="already replayed"):
        _run("replay", str(row.id))
    assert _take("ai.batch") == []
    _run("replay", str(row.id), "--force")
    assert len(_take("ai.batch")) == 1 and DeadLetterReplay.objects.filter(dead_letter=row).count() == 2


def test_replay_matching_replays_what_the_filters_select(topology):
    wanted = [archive(task_name="test.cmd_bulk", queue="ai.batch") for _ in range(2)]
    other = archive(task_name="test.cmd_other", queue="ai.batch")
    _take("ai.batch")
    out = _run("replay", "--matching", "--task", "test.cmd_bulk")
    assert "replayed 2, skipped 0, failed 0" in out
    assert len(_take("ai.batch")) == 2
    assert all(DeadLetter.objects.get(id=r.id).status == DeadLetterStatus.REPLAYED for r in wanted)
    assert DeadLetter.objects.get(id=other.id).status == DeadLetterStatus.NEW


def test_discard_marks_the_row_and_bad_input_is_a_clear_error(topology):
    row = archive(task_name="test.cmd_discard", queue="ai.batch")
    assert "discarded" in _run("discard", str(row.id))
    assert DeadLetter.objects.get(id=row.id).status == DeadLetterStatus.DISCARDED
    with pytest.raises(CommandError, match="not a dead letter id"):
        _run("discard", "not-a-uuid")
    with pytest.raises(CommandError, match="ids or --matching"):
        _run("replay", str(row.id), "--matching")
    with pytest.raises(CommandError, match="no user named"):
        _run("replay", str(row.id), "--user", "nobody-here")
