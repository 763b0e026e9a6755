"""A dead-letter replay cut off between its claim and its publish is taken over, not lost.

The replaying process (``manage.py task_dead_letters replay``) is SIGKILLed after
the claim commits and before it publishes. Before, the row stayed "replayed"
with nothing published, and every retry answered 409 "already replayed".
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.conf import settings
from kombu import Connection

from apps.eventbus.queues import declare_topology
from apps.ops.models import DeadLetter, DeadLetterReplay, DeadLetterStatus, ReplayStatus
from tests.apps.ops.test_dead_letters_api import archive
from tests.support.processes import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _take(queue: str) -> list:
    with Connection(settings.BROKER_URL) as conn:
        channel = conn.default_channel
        taken = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            taken.append(message)
        return taken


def _replay(dead_letter_id: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "task_dead_letters", "replay", dead_letter_id],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_replay_killed_before_its_publish_is_taken_over_and_published_once(subprocess_env):
    with Connection(settings.BROKER_URL) as conn:
        declare_topology(conn.default_channel)
    row = archive(task_name="test.replay_crash", queue="ai.batch")
    _take("ai.batch")

    crashed = _replay(str(row.id), subprocess_env(OPS_REPLAY_CRASH_BEFORE_PUBLISH="1"))
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    first = DeadLetterReplay.objects.get(dead_letter=row)
    assert first.status == ReplayStatus.PENDING
    assert DeadLetter.objects.get(id=row.id).status == DeadLetterStatus.REPLAYED
    assert _take("ai.batch") == []  # the claim committed, nothing went out

    # While the first might still be publishing, a second request is refused as before.
    busy = _replay(str(row.id), subprocess_env(OPS_REPLAY_PENDING_TIMEOUT_S="600"))
    assert busy.returncode == 1 and "already replayed" in busy.stderr, busy.stderr

    # Past the pending timeout, the next request takes the replay over and publishes it.
    retried = _replay(str(row.id), subprocess_env(OPS_REPLAY_PENDING_TIMEOUT_S="0"))
    assert retried.returncode == 0, retried.stdout + retried.stderr
    first.refresh_from_db()
    assert first.status == ReplayStatus.PUBLISH_FAILED and "interrupted" in first.error
    second = DeadLetterReplay.objects.exclude(id=first.id).get(dead_letter=row)
    assert second.status == ReplayStatus.PUBLISHED
    [message] = _take("ai.batch")
    assert message.headers["ce_replay_id"] == str(second.id)
    assert message.headers["task"] == "test.replay_crash"
