"""Idempotency keys under real concurrency (two threads, real PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.common.exceptions import Conflict, Unprocessable
from apps.context import services
from apps.context.idempotency import idempotency_key_purge, idempotent_call, request_fingerprint
from apps.context.models import ContextEvent, IdempotencyKey
from apps.context.services import EventInput


@pytest.mark.django_db(transaction=True)
def test_second_request_while_first_runs_gets_409_then_the_replay(user):
    session = services.session_create(owner=user, title="idem")
    started, release = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def slow_work():
        started.set()
        assert release.wait(timeout=30)
        stored = services.context_event_append(session=session, author=user, events=[EventInput("note", {"n": 1})])
        return 201, {"seq": stored[0].seq}

    def first() -> None:
        try:
            results["first"] = idempotent_call(user=user, key="race", scope="s", payload={"n": 1}, work=slow_work)
        finally:
            connection.close()

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(timeout=30)
    with pytest.raises(Conflict) as conflict:
        idempotent_call(user=user, key="race", scope="s", payload={"n": 1}, work=lambda: pytest.fail("ran twice"))
    assert conflict.value.status_code == 409
    release.set()
    thread.join(timeout=30)

    replay = idempotent_call(user=user, key="race", scope="s", payload={"n": 1}, work=lambda: pytest.fail("ran twice"))
    assert replay.replayed and replay.body == results["first"].body == {"seq": 1}
    assert ContextEvent.objects.filter(session=session).count() == 1


@pytest.mark.django_db
def test_abandoned_in_progress_key_is_taken_over(user):
    fingerprint = request_fingerprint(scope="s", payload={"a": 1})
    record = IdempotencyKey.objects.create(user=user, key="stale", scope="s", request_hash=fingerprint)
    IdempotencyKey.objects.filter(pk=record.pk).update(updated_at=timezone.now() - timedelta(minutes=5))
    result = idempotent_call(user=user, key="stale", scope="s", payload={"a": 1}, work=lambda: (201, {"ok": True}))
    assert not result.replayed and result.body == {"ok": True}
    assert IdempotencyKey.objects.get(pk=record.pk).status == IdempotencyKey.Status.COMPLETED


@pytest.mark.django_db
def test_work_and_completion_commit_together(user):
    def failing():
        IdempotencyKey.objects.update(response_body={"leak": True})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        idempotent_call(user=user, key="k", scope="s", payload={}, work=failing)
    assert not IdempotencyKey.objects.exists()  # freed for a retry


@pytest.mark.django_db
def test_other_scope_with_same_key_is_422(user):
    idempotent_call(user=user, key="k", scope="POST /a/", payload={}, work=lambda: (201, {}))
    with pytest.raises(Unprocessable):
        idempotent_call(user=user, key="k", scope="POST /b/", payload={}, work=lambda: (201, {}))


@pytest.mark.django_db
def test_purge_deletes_old_keys_only(user):
    old = IdempotencyKey.objects.create(user=user, key="old", scope="s", request_hash="h")
    IdempotencyKey.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))
    IdempotencyKey.objects.create(user=user, key="new", scope="s", request_hash="h")
    assert idempotency_key_purge() == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["new"]


@pytest.mark.django_db(transaction=True)
def test_an_old_in_progress_key_is_taken_over_only_once_its_holder_is_gone(user, settings):
    from django.db import connections

    from apps.context.idempotency import ADVISORY_NAMESPACE, advisory_lock_key

    # given a key in progress for far longer than the lease, whose holder still lives (holds the key's lock)
    settings.IDEMPOTENCY_LOCK_TIMEOUT_S = 1
    fingerprint = request_fingerprint(scope="s", payload={"a": 1})
    record = IdempotencyKey.objects.create(user=user, key="held", scope="s", request_hash=fingerprint)
    IdempotencyKey.objects.filter(pk=record.pk).update(updated_at=timezone.now() - timedelta(minutes=5))
    holder = connections.create_connection("default")
    holder.ensure_connection()
    with holder.cursor() as cursor:
        lock = [ADVISORY_NAMESPACE, advisory_lock_key(user_id=user.pk, key="held")]
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", lock)

    # when a repeat comes, it is told the key is in progress and runs nothing
    with pytest.raises(Conflict) as conflict:
        idempotent_call(user=user, key="held", scope="s", payload={"a": 1}, work=lambda: pytest.fail("ran twice"))
    assert conflict.value.code == "idempotency_key_in_progress"

    # then once the holder's connection is gone (a crash), the next repeat takes the key over and runs
    holder.close()
    result = idempotent_call(user=user, key="held", scope="s", payload={"a": 1}, work=lambda: (201, {"ok": True}))
    assert not result.replayed and result.body == {"ok": True}
    assert IdempotencyKey.objects.get(pk=record.pk).status == IdempotencyKey.Status.COMPLETED


@pytest.mark.django_db
def test_a_replay_while_another_request_holds_the_key_gets_the_stored_answer(user):
    from django.db import connections

    from apps.context.idempotency import ADVISORY_NAMESPACE, advisory_lock_key

    first = idempotent_call(user=user, key="done", scope="s", payload={}, work=lambda: (201, {"n": 1}))
    holder = connections.create_connection("default")
    holder.ensure_connection()
    try:
        with holder.cursor() as cursor:
            lock = [ADVISORY_NAMESPACE, advisory_lock_key(user_id=user.pk, key="done")]
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", lock)
        again = idempotent_call(user=user, key="done", scope="s", payload={}, work=lambda: pytest.fail("ran twice"))
        assert again.replayed and again.body == first.body
        with pytest.raises(Unprocessable):
            idempotent_call(user=user, key="done", scope="s", payload={"other": 1}, work=lambda: (201, {}))
    finally:
        holder.close()
