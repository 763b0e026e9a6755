"""End to end with the real model in a real worker.

REST append -> outbox -> relay -> RabbitMQ -> ``ai_trigger`` subscriber ->
inference request (coalesced) -> outbox task -> relay -> ``ai.realtime`` worker
(``--pool threads``, real all-MiniLM-L6-v2) -> suggestions stored, broadcast
-> ``suggestion`` frames on a real WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from django.conf import settings
from kombu import Connection
from websockets.asyncio.client import connect

from apps.eventbus.queues import dead_letter_queue
from tests.workers.inference.conftest import CLOSEST, CONVERSATION

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

FRAME_KEYS = {
    "type",
    "request_id",
    "id",
    "kind",
    "content",
    "score",
    "source_seqs",
    "trigger_seq",
    "model_version",
    "explanation",
    "created_at",
}


def _user_with_token(username: str) -> tuple[Any, str]:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user(username=username, password="pw-Secret-123")
    return user, Token.objects.create(user=user).key


def _session(user: Any) -> Any:
    from apps.context import services

    return services.session_create(owner=user, title="AI integration")


async def _append(stack, session_id, token: str, events: list[dict[str, Any]]) -> list[int]:
    body: dict[str, Any] = events[0] if len(events) == 1 else {"events": events}
    async with httpx.AsyncClient(base_url=stack.http, timeout=20) as client:
        response = await client.post(
            f"/api/v1/sessions/{session_id}/events/", json=body, headers={"Authorization": f"Token {token}"}
        )
    assert response.status_code == 201, response.text
    data = response.json()
    return [e["seq"] for e in data["events"]] if "events" in data else [data["seq"]]


async def _suggestions_for(ws, trigger_seq: int, *, timeout: float, settle: float = 1.0) -> list[dict[str, Any]]:
    """Every ``suggestion`` frame of the request for ``trigger_seq`` (waits for the first, then settles)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    found: list[dict[str, Any]] = []
    first_at = 0.0
    while True:
        remaining = (deadline if not found else min(deadline, first_at + settle)) - loop.time()
        if remaining <= 0:
            break
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        except TimeoutError:
            break
        if frame.get("type") == "suggestion" and frame["trigger_seq"] == trigger_seq:
            if not found:
                first_at = loop.time()
            found.append(frame)
    return found


def next_actions_explained(frames: list[dict[str, Any]]) -> bool:
    """Every next-action frame names the model and the probability it guessed with."""
    guesses = [f for f in frames if f["kind"] == "next_action"]
    return bool(guesses) and all(
        f["explanation"]["method"] == "next_action" and f["explanation"]["probability"] == f["score"] for f in guesses
    )


def test_events_appended_over_rest_bring_suggestion_frames_pointing_at_the_closest_event(ai_stack):
    user, token = _user_with_token("carol")
    session = _session(user)
    trigger_text, expected_index = next(iter(sorted(CLOSEST.items())))

    async def scenario() -> tuple[list[int], int, list[dict[str, Any]]]:
        async with connect(ai_stack.ws_url(session.pk, token), open_timeout=10, ping_interval=None) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert hello["type"] == "hello"
            actions = [
                {"event_type": "user_action", "data": {"action": a}} for a in ("open_doc", "comment", "open_doc")
            ]
            texts = [{"event_type": "context_update", "data": {"text": t}} for t in CONVERSATION]
            seqs = await _append(ai_stack, session.pk, token, actions + texts)
            # The conversation's own request(s) finish first: updates while one
            # is pending are coalesced, so the last seq is among the triggers.
            settled = await _suggestions_for(ws, seqs[-1], timeout=120)
            assert settled, ai_stack.logs()
            [trigger_seq] = await _append(
                ai_stack, session.pk, token, [{"event_type": "context_update", "data": {"text": trigger_text}}]
            )
            frames = await _suggestions_for(ws, trigger_seq, timeout=60)
            return seqs, trigger_seq, frames

    seqs, trigger_seq, frames = asyncio.run(scenario())

    assert frames, ai_stack.logs()
    for frame in frames:
        assert set(frame) == FRAME_KEYS, frame
    related = sorted((f for f in frames if f["kind"] == "related_context"), key=lambda f: -f["score"])
    conversation_seqs = seqs[3:]
    assert related, frames
    assert related[0]["source_seqs"] == [conversation_seqs[expected_index - 1]]
    assert related[0]["content"]["text"] == CONVERSATION[expected_index - 1]
    assert related[0]["model_version"] == "all-MiniLM-L6-v2"
    assert related[0]["explanation"]["method"] == "hybrid" and related[0]["explanation"]["dense"] >= 0.2
    assert next_actions_explained(frames)
    next_actions = sorted((f for f in frames if f["kind"] == "next_action"), key=lambda f: -f["score"])
    assert next_actions and next_actions[0]["content"] == {"action": "comment", "after": "open_doc"}
    assert next_actions[0]["source_seqs"] == seqs[:3]

    from apps.ai.models import InferenceRequest

    requests = InferenceRequest.objects.filter(session=session)
    # Five context updates, fewer or as many requests: coalescing never adds any.
    assert 2 <= requests.count() <= 5
    assert set(requests.values_list("status", flat=True)) == {"done"}


def test_an_explicit_query_is_answered_and_pollable(ai_stack):
    user, token = _user_with_token("dave")
    session = _session(user)

    async def scenario() -> dict[str, Any]:
        texts = [{"event_type": "context_update", "data": {"text": t}} for t in CONVERSATION]
        await _append(ai_stack, session.pk, token, texts)
        async with httpx.AsyncClient(
            base_url=ai_stack.http, timeout=20, headers={"Authorization": f"Token {token}"}
        ) as client:
            response = await client.post(
                f"/api/v1/sessions/{session.pk}/suggestions/", json={"query": "who is arranging the dinner?"}
            )
            assert response.status_code == 202, response.text
            request_id = response.json()["id"]
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                body = (await client.get(f"/api/v1/inference-requests/{request_id}/")).json()
                if body["status"] in ("done", "failed"):
                    return body
                await asyncio.sleep(0.3)
        raise AssertionError("query request never finished:\n" + ai_stack.logs())

    body = asyncio.run(scenario())
    assert body["status"] == "done", body
    assert body["query"] == "who is arranging the dinner?"
    best = max(body["suggestions"], key=lambda s: s["score"])
    assert best["kind"] == "query" and best["source_seqs"] == [3]


def test_a_promoted_model_is_used_by_the_running_worker_without_restart(ai_stack):
    from apps.ai import services
    from apps.ai.models import Suggestion
    from workers.inference.next_action import save_artifact, train_model

    user, token = _user_with_token("erin")
    session = _session(user)
    actions = ["search", "open_doc", "edit", "save"] * 2

    async def append_and_wait(text: str) -> None:
        events = [{"event_type": "user_action", "data": {"action": a}} for a in actions]
        events.append({"event_type": "context_update", "data": {"text": text}})
        [*_, last] = await _append(ai_stack, session.pk, token, events)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if await asyncio.to_thread(
                lambda: Suggestion.objects.filter(session=session, trigger_seq=last, kind="next_action").exists()
            ):
                return
            await asyncio.sleep(0.3)
        raise AssertionError("no next_action suggestion:\n" + ai_stack.logs())

    asyncio.run(append_and_wait("first pass"))
    assert set(
        Suggestion.objects.filter(session=session, kind="next_action").values_list("model_version", flat=True)
    ) == {"next_action-baseline"}

    model, vocab = train_model([actions * 4], epochs=2)
    version = services.model_version_register(
        artifact=save_artifact(model, vocab), metrics={"note": "test"}, promote=True
    )
    asyncio.run(append_and_wait("second pass"))
    latest = Suggestion.objects.filter(session=session, kind="next_action").order_by("-trigger_seq").first()
    assert latest.model_version == version.label


def test_a_poison_input_dead_letters_alone_while_its_batch_mates_succeed(ai_stack):
    from apps.ai import selectors
    from project.celery import app

    good = [f"batch mate number {i} talks about quarterly planning" for i in range(7)]
    poison = "this text carries a lone surrogate \ud800 the tokenizer refuses"
    task_ids: dict[str, str] = {}
    for text in [*good[:3], poison, *good[3:]]:
        task_id = str(uuid.uuid4())
        task_ids[text] = task_id
        app.send_task("ai.embed_texts", kwargs={"texts": [text]}, queue="ai.realtime", task_id=task_id)

    hashes = [selectors.embedding_content_hash(text=t, model_name="all-MiniLM-L6-v2") for t in good]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(selectors.embedding_get_many(content_hashes=hashes)) < len(good):
        time.sleep(0.3)
    assert len(selectors.embedding_get_many(content_hashes=hashes)) == len(good), ai_stack.logs()

    dead: list[str] = []
    deadline = time.monotonic() + 30
    with Connection(settings.BROKER_URL) as conn:
        dlq = dead_letter_queue("ai.realtime")(conn.default_channel)
        dlq.declare()
        while time.monotonic() < deadline and task_ids[poison] not in dead:
            message = dlq.get(no_ack=True)
            if message is None:
                time.sleep(0.3)
                continue
            dead.append(message.headers.get("id"))
    assert task_ids[poison] in dead, ai_stack.logs()
    assert not set(dead) & {task_ids[t] for t in good}


def test_replaying_the_dead_letter_of_a_failed_request_runs_it_again(ai_stack):
    """The replay is a new message with a new task id; the request it names failed under the old one.

    Before, the claim only let the old task id retake a failed request: the
    replayed task was "skipped", the request stayed failed, and the replay was
    recorded as succeeded.
    """
    from django.db import transaction

    from apps.ai import services as ai_services
    from apps.ai.models import InferenceRequest
    from apps.ops.deadletters import services as ops_services
    from apps.ops.models import DeadLetterReplay, ReplayStatus
    from tests.apps.ops.test_dead_letters_api import archive

    user, _ = _user_with_token("replay_owner")
    session = _session(user)
    old_task_id = str(uuid.uuid4())
    with transaction.atomic():
        request = ai_services.inference_request_create_query(session_id=session.pk, user=user, query="what next?")
        # It failed (and was dead-lettered) under its first task id.
        InferenceRequest.objects.filter(pk=request.pk).update(
            status=InferenceRequest.Status.FAILED, claim_token=old_task_id, error="TimeoutError: model busy"
        )
    dead_letter = archive(
        task_name="ai.generate_suggestions",
        queue="ai.realtime",
        task_id=old_task_id,
        kwargs={"request_id": str(request.pk)},
    )

    replay = ops_services.dead_letter_replay(dead_letter_id=dead_letter.pk, user=None)
    assert replay.status == ReplayStatus.PUBLISHED and replay.new_task_id != old_task_id
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        request.refresh_from_db()
        if request.status == InferenceRequest.Status.DONE:
            break
        time.sleep(0.3)
    assert request.status == InferenceRequest.Status.DONE, ai_stack.logs()
    assert request.claim_token == replay.new_task_id
    deadline = time.monotonic() + 30
    while DeadLetterReplay.objects.get(pk=replay.pk).status != ReplayStatus.SUCCEEDED:
        assert time.monotonic() < deadline, ai_stack.logs()
        time.sleep(0.2)
