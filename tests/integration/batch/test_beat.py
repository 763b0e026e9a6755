"""Real ``celery beat`` processes against this run's vhost and database.

Two beats run the same schedule; only the lock holder sends (all messages
share one ``origin``), the other takes over when the first is killed, and an
edit of the schedule in the database changes what beat sends, without restart.
"""

from __future__ import annotations

import json
import time

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tests.integration.batch.conftest import drain, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROBE = "maintenance.beat_probe"  # never registered: nothing consumes it here, we count the messages
FENCE = "maintenance.beat_fence"


def _probes(conn, seen: list[dict]) -> list[dict]:
    seen.extend(m for m in drain(conn, "maintenance") if m["task"] == PROBE)
    return seen


def _fences(conn, tail: list[dict]) -> int:
    tail.extend(drain(conn, "maintenance"))
    return sum(m["task"] == FENCE for m in tail)


def test_one_beat_sends_a_second_stands_by_takes_over_and_follows_edits(processes, broker):
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.create(
        name="probe", task=PROBE, interval=every_second, queue="maintenance", kwargs=json.dumps({"marker": "a"})
    )
    first = processes.beat("beat-a")
    seen: list[dict] = []
    wait_for(lambda: _probes(broker, seen), message="the first beat's sends", timeout=90)
    second = processes.beat("beat-b")
    # Give the second beat time to start and try for the lock.
    wait_for(
        lambda: "Scheduler: Sending" in first.log() and "beat: Starting" in second.log(),
        timeout=60,
        message="both beats up",
    )
    time.sleep(6)
    _probes(broker, seen)
    origins = {m["origin"] for m in seen}
    assert len(origins) == 1, f"two beats sent: {origins}"
    leader_origin = origins.pop()
    window = time.monotonic()
    time.sleep(4)
    during = _probes(broker, [])
    elapsed = time.monotonic() - window
    # One beat at one message per second: never the double rate of two senders.
    assert len(during) <= elapsed + 2, (len(during), elapsed)
    assert {m["origin"] for m in during} == {leader_origin}

    # When the active beat is killed, the standby takes over and sends alone.
    first.kill9()
    after: list[dict] = []
    wait_for(
        lambda: any(m["origin"] != leader_origin for m in _probes(broker, after)),
        timeout=30,
        message="the standby taking over",
    )
    time.sleep(3)
    _probes(broker, after)
    assert {m["origin"] for m in after} - {leader_origin}, after
    late = [m for m in after if m["origin"] == leader_origin]
    assert len(late) <= 1  # at most one already in flight when it died
    assert second.process.poll() is None
    assert {m["kwargs"]["marker"] for m in seen + during + after} == {"a"}

    # When an operator edits the kwargs (what admin does: a model save), the running beat sends the new ones
    task.kwargs = json.dumps({"marker": "b"})
    task.save()
    wait_for(
        lambda: any(m["kwargs"].get("marker") == "b" for m in _probes(broker, after)),
        timeout=30,
        message="beat sending the edited kwargs",
    )

    # When the operator disables it, beat stops sending it. A fence task added after the disable
    # proves beat has re-read the schedule: the disable is in every schedule the fence is in, so no
    # probe may follow the first fence in the queue (one beat publishes in order).
    task.enabled = False
    task.save()
    PeriodicTask.objects.create(name="fence", task=FENCE, interval=every_second, queue="maintenance")
    tail: list[dict] = []
    wait_for(
        lambda: _fences(broker, tail) >= 3,
        timeout=60,
        message="the fence task after the disable",
    )
    first_fence = next(i for i, m in enumerate(tail) if m["task"] == FENCE)
    assert [m for m in tail[first_fence:] if m["task"] == PROBE] == []
    # Beat's own bookkeeping writes did not put the operator's edit back.
    task.refresh_from_db()
    assert (task.enabled, json.loads(task.kwargs)) == (False, {"marker": "b"})
