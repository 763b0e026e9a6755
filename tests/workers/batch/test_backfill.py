"""The embedding backfill embeds exactly the text events that have no embedding (the real model)."""

from __future__ import annotations

import pytest

from apps.ai import selectors as ai_selectors
from apps.ai.models import Embedding
from apps.batch.jobs import job_execute
from apps.context.services import EventInput, context_event_append

pytestmark = pytest.mark.slow


def test_backfill_embeds_only_what_is_missing_and_continues_where_it_stopped(db, session_factory, user):
    from workers.batch.backfill import embed_missing
    from workers.inference.runtime import runtime

    session = session_factory()
    context_event_append(
        session=session,
        author=user,
        events=[
            EventInput("context_update", {"text": "The deploy is blocked on the database migration."}),
            EventInput("note", {"text": "Ask Dana about the invoice export."}),
            EventInput("user_action", {"action": "open_doc"}),
            EventInput("note", {"other": "no text here"}),
            EventInput("context_update", {"text": "Customers want dark mode."}),
        ],
    )
    # Given one of the texts already embedded (by a suggestion request, say)
    assert embed_missing(["Customers want dark mode."]) == {"embedded": 1, "skipped": 0}

    run = job_execute(name="embedding_backfill", params={"chunk_size": 2})

    assert run.result == {"embedded": 2, "skipped": 0, "scanned": 4}
    assert run.progress_total == 4 and run.progress_done == 4
    model = runtime().model_name
    expected = {
        ai_selectors.embedding_content_hash(text=t, model_name=model)
        for t in (
            "The deploy is blocked on the database migration.",
            "Ask Dana about the invoice export.",
            "Customers want dark mode.",
        )
    }
    assert set(Embedding.objects.values_list("content_hash", flat=True)) == expected
    assert {e.dim for e in Embedding.objects.all()} == {384}

    # The next run starts after the last one's high-water mark
    assert job_execute(name="embedding_backfill").result == {"embedded": 0, "skipped": 0, "scanned": 0}
    context_event_append(session=session, author=user, events=[EventInput("note", {"text": "New idea: a CLI."})])
    latest = job_execute(name="embedding_backfill")
    assert latest.result == {"embedded": 1, "skipped": 0, "scanned": 1}
    assert Embedding.objects.count() == 4

    # A run stops at max_items; the next one picks up the rest
    context_event_append(
        session=session, author=user, events=[EventInput("note", {"text": f"Backlog item {i}."}) for i in range(5)]
    )
    capped = job_execute(name="embedding_backfill", params={"chunk_size": 2, "max_items": 3})
    assert (capped.progress_total, capped.progress_done, capped.result["embedded"]) == (3, 3, 3)
    rest = job_execute(name="embedding_backfill", params={"chunk_size": 2, "max_items": 3})
    assert rest.result["embedded"] == 2 and Embedding.objects.count() == 9
