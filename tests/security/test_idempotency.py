"""An ``Idempotency-Key`` is owned by the request holding it, on the Procfile's web process.

A request that holds its key longer than the lease (``IDEMPOTENCY_LOCK_TIMEOUT_S``,
1 s here) keeps it: a second request with the same key and body gets 409
while the first runs, the work happens once, and a repeat afterwards replays
the first answer.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.context.models import ContextEvent, IdempotencyKey, Session
from tests.security.conftest import auth

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LEASE_S = 1


def _until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _backends_waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        # Inside a transaction the statistics views keep their first snapshot: take a fresh one.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


def test_a_key_held_longer_than_the_lease_is_not_taken_over_and_the_work_runs_once(start_web, team):
    # given a server whose idempotency lease is 1 s
    web = start_web(IDEMPOTENCY_LOCK_TIMEOUT_S=str(LEASE_S))
    url = f"{web.http}/api/v1/sessions/{team['sid']}/events/"
    headers = {**auth(team["tokens"]["bob"]), "Idempotency-Key": "slow-append-1"}
    body = {"event_type": "note", "data": {"text": "exactly once"}}  # no client_msg_id: nothing else dedupes it
    answers: dict[str, httpx.Response] = {}

    def post(name: str) -> None:
        answers[name] = httpx.post(url, json=body, headers=headers, timeout=60)

    first = threading.Thread(target=post, args=("first",))
    second = threading.Thread(target=post, args=("second",))
    with transaction.atomic():
        # the session row is locked here, so the first request's append waits: a slow request
        Session.objects.select_for_update().get(pk=team["session"].pk)
        first.start()
        _until(lambda: IdempotencyKey.objects.filter(key="slow-append-1").exists(), "the first request's claim")
        # when its key is older than the lease and a second request with the same key and body comes
        _until(
            lambda: IdempotencyKey.objects.filter(
                key="slow-append-1", updated_at__lt=timezone.now() - timedelta(seconds=LEASE_S + 0.5)
            ).exists(),
            "the key to outlive the lease",
        )
        second.start()
        # (it answers at once, or it too reaches the append and waits on the row lock)
        _until(lambda: "second" in answers or _backends_waiting_on_a_lock() >= 2, "the second request to settle")
    first.join(timeout=60)
    second.join(timeout=60)

    # then the second was told the key is in progress, the first succeeded, and the work ran once
    assert answers["second"].status_code == 409, (answers["second"].status_code, answers["second"].text)
    assert answers["second"].json()["code"] == "idempotency_key_in_progress"
    assert answers["first"].status_code == 201, answers["first"].text
    assert ContextEvent.objects.filter(session=team["session"]).count() == 1

    # and a repeat now replays the first answer without running anything
    again = httpx.post(url, json=body, headers=headers, timeout=30)
    assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == answers["first"].json()
    assert ContextEvent.objects.filter(session=team["session"]).count() == 1
