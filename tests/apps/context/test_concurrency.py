"""Concurrent appends to one session: seq is 1..N, no gaps, no duplicates."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from apps.context import services
from apps.context.models import ContextEvent
from apps.context.services import EventInput

THREADS = 8
ROUNDS = 15


@pytest.mark.django_db(transaction=True)
def test_threads_appending_to_one_session_get_gap_free_seq(make_user, user):
    session = services.session_create(owner=user, title="race")
    writers = [user]
    for i in range(THREADS - 1):
        writer = make_user(f"writer{i}")
        services.participant_add(session=session, actor=user, username=writer.username, role="editor")
        writers.append(writer)

    barrier = threading.Barrier(THREADS)
    seen: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            mine: list[int] = []
            for round_no in range(ROUNDS):
                # Mix single appends and batches of three.
                size = 1 if round_no % 2 else 3
                batch = [EventInput("note", {"t": index, "r": round_no, "k": k}) for k in range(size)]
                stored = services.context_event_append(session=session, author=writers[index], events=batch)
                mine.extend(e.seq for e in stored)
            seen[index] = mine
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors

    per_thread = (ROUNDS // 2 + 1) * 3 + (ROUNDS // 2)
    total = THREADS * per_thread
    seqs = list(ContextEvent.objects.filter(session=session).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, total + 1))
    session.refresh_from_db()
    assert session.last_seq == total
    for mine in seen.values():
        # Each writer's own events keep their order, and a batch is contiguous.
        assert mine == sorted(mine)
    assert sorted(s for mine in seen.values() for s in mine) == seqs
