"""Tenant isolation against the real platform: what the AI shows a session holds only what its people may see.

The platform's own processes (ASGI server, outbox relay, event subscribers, a
realtime worker with the real model) over the real services. Each test plays
one way one user's data could reach another through the AI and asserts it
does not, and that the legitimate path still answers:

- automatic suggestions retrieving from the requester's other sessions and
  showing that text (and the other session's id) to every participant;
- a coalesced request whose requester is one participant and whose trigger
  text is another's, querying the first one's private sessions;
- next-action names planted by one user (a link, a 4 KB name) or private to
  one user reaching other users' suggestions, through the live baseline and
  through the trained model.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.integration.ai.conftest import AiStack, purge_realtime_queue, start_stack
from tests.workers.inference.conftest import CONVERSATION, OTHER_SESSION, OTHER_SESSION_TRIGGER

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SECRET = OTHER_SESSION[0]
PLANTED_LINK = "https://evil.example/phish"
PLANTED_LONG = "x" * 4000
PRIVATE_NAME = "acme_merger_plan"
WAIT_S = 180


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[AiStack]:
    with django_db_blocker.unblock():
        purge_realtime_queue()
        running = start_stack(tmp_path_factory.mktemp("tenants-stack"), AI_DEVICE="cpu")
    yield running
    for proc in running.procs.values():
        proc.stop()


def _user(username: str) -> tuple[Any, str]:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user(username=username, password="pw-Secret-123")
    return user, Token.objects.create(user=user).key


def _session(owner: Any, title: str, **members: str) -> Any:
    """A session of ``owner`` with ``members`` (username -> role) added through the service."""
    from apps.context import services

    session = services.session_create(owner=owner, title=title)
    for username, role in members.items():
        services.participant_add(session=session, actor=owner, username=username, role=role)
    return session


def _append(stack: AiStack, session_id: Any, token: str, events: list[dict[str, Any]]) -> list[int]:
    body: dict[str, Any] = events[0] if len(events) == 1 else {"events": events}
    response = httpx.post(
        f"{stack.http}/api/v1/sessions/{session_id}/events/",
        json=body,
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    data = response.json()
    return [e["seq"] for e in data["events"]] if "events" in data else [data["seq"]]


def _texts(*texts: str) -> list[dict[str, Any]]:
    return [{"event_type": "context_update", "data": {"text": t}} for t in texts]


def _wait(condition: Callable[[], Any], *, what: str, stack: AiStack, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{stack.logs()}")


def _settled(session_id: Any, trigger_seq: int) -> bool:
    """Every request of the session is finished and one covers ``trigger_seq``."""
    from apps.ai.models import InferenceRequest

    requests = InferenceRequest.objects.filter(session_id=session_id)
    return (
        not requests.filter(status__in=["pending", "running"]).exists()
        and requests.filter(status="done", trigger_seq__gte=trigger_seq).exists()
    )


def _quiesce(stack: AiStack) -> None:
    """Wait until the outbox is drained and no request is open, so the test's teardown flush races nothing."""
    from apps.ai.models import InferenceRequest
    from apps.eventbus.models import OutboxMessage

    _wait(
        lambda: (
            not OutboxMessage.objects.filter(status="pending").exists()
            and not InferenceRequest.objects.filter(status__in=["pending", "running"]).exists()
        ),
        what="the platform to go quiet",
        stack=stack,
    )


def _rest_suggestions(stack: AiStack, session_id: Any, token: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{stack.http}/api/v1/sessions/{session_id}/suggestions/?page_size=100",
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


class FrameCollector:
    """A real WebSocket (as ``token``'s user) collecting every ``suggestion`` frame on a thread."""

    def __init__(self, stack: AiStack, session_id: Any, token: str) -> None:
        self.url = stack.ws_url(session_id, token)
        self.frames: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            async with connect(self.url, open_timeout=15, ping_interval=None) as ws:
                hello = json.loads(await asyncio.wait_for(ws.recv(), 15))
                assert hello["type"] == "hello", hello
                self.ready.set()
                while not self.stop.is_set():
                    try:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 0.2))
                    except TimeoutError:
                        continue
                    if frame.get("type") == "suggestion":
                        self.frames.append(frame)

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread, which asserts on it
            self.error = exc
            self.ready.set()

    def __enter__(self) -> FrameCollector:
        self.thread.start()
        assert self.ready.wait(30) and self.error is None, self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _leaks(items: list[dict[str, Any]], *, private_session: Any) -> list[dict[str, Any]]:
    """Suggestions (frames or REST rows) that show the private session's id or text."""
    return [
        s
        for s in items
        if str(s["content"].get("session_id")) == str(private_session.pk) or SECRET in str(s["content"])
    ]


def test_the_trained_model_learns_only_the_shared_vocabulary():
    # Given planted and private names beside structured sessions of three users
    # (first in the module, before the stack starts: nothing else writes meanwhile)
    from apps.ai.models import ModelVersion
    from apps.ai.selectors import model_version_artifact
    from apps.batch.jobs import job_execute
    from apps.batch.synthetic import SyntheticConfig, training_data_generate
    from workers.inference.next_action import load_predictor

    _plant_vocabulary_attack()
    training_data_generate(config=SyntheticConfig(sessions=30, min_actions=10, max_actions=12, seed=5), users=3)

    # When the training job runs
    run = job_execute(name="train_next_action", params={"epochs": 1, "min_eval_pairs": 1, "device": "cpu"})

    # Then the registered artifact knows none of the planted or private names
    version = ModelVersion.objects.get(pk=run.result["model_version_id"])
    tokens = load_predictor(model_version_artifact(model_version_id=version.pk)).vocab.actions
    assert PLANTED_LINK not in tokens, tokens
    assert all(len(t) <= 64 for t in tokens), [t[:80] for t in tokens]
    assert PRIVATE_NAME not in tokens, tokens
    assert {"open_doc", "edit", "save"} <= set(tokens), tokens


def test_automatic_suggestions_never_show_another_session_to_a_viewer(stack):
    # Given alice's private session holds the best match, and a shared session where bob only views
    alice, alice_token = _user("tenant-alice")
    bob, bob_token = _user("tenant-bob")
    private = _session(alice, "Alice private")
    [private_seq] = _append(stack, private.pk, alice_token, _texts(SECRET))
    _wait(lambda: _settled(private.pk, private_seq), what="the private session's request", stack=stack)
    shared = _session(alice, "Shared", **{bob.username: "viewer"})

    with FrameCollector(stack, shared.pk, bob_token) as viewer:
        # When alice writes in the shared session what matches her private text
        seqs = _append(stack, shared.pk, alice_token, _texts(*CONVERSATION[:2]))
        [trigger_seq] = _append(stack, shared.pk, alice_token, _texts(OTHER_SESSION_TRIGGER))
        _wait(lambda: _settled(shared.pk, trigger_seq), what="the shared session's requests", stack=stack)
        stored = _rest_suggestions(stack, shared.pk, bob_token)
        _wait(lambda: len(viewer.frames) >= len(stored), what="the suggestion frames", stack=stack, timeout=30)

    # Then neither the viewer's frames nor the stored suggestions show the private session
    assert not _leaks(viewer.frames, private_session=private), viewer.frames
    assert not _leaks(stored, private_session=private), stored
    # And every related suggestion points into the shared session, at its own events
    related = [s for s in stored if s["kind"] == "related_context"]
    assert all(s["content"]["session_id"] == str(shared.pk) for s in related), related
    assert all(set(s["source_seqs"]) <= {*seqs, trigger_seq} for s in related), related
    _quiesce(stack)


def test_a_coalesced_request_never_queries_one_participants_sessions_with_anothers_text(stack):
    # Given carol's private session, and a session she shares with dan (editor)
    from apps.ai.models import InferenceRequest

    carol, carol_token = _user("tenant-carol")
    dan, dan_token = _user("tenant-dan")
    private = _session(carol, "Carol private")
    [private_seq] = _append(stack, private.pk, carol_token, _texts(SECRET))
    _wait(lambda: _settled(private.pk, private_seq), what="the private session's request", stack=stack)
    shared = _session(carol, "Shared", **{dan.username: "editor"})
    worker = stack.procs["worker"].popen

    # When carol's update and then dan's are merged into one pending request (the worker held still)
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        _append(stack, shared.pk, carol_token, _texts("Good morning, let us plan the week."))
        pending = InferenceRequest.objects.filter(session=shared, status="pending", kind="auto")
        _wait(lambda: pending.filter(requested_by=carol).exists(), what="carol's pending request", stack=stack)
        [dan_seq] = _append(stack, shared.pk, dan_token, _texts(OTHER_SESSION_TRIGGER))
        _wait(
            lambda: pending.filter(requested_by=carol, trigger_seq=dan_seq, coalesced__gte=2).exists(),
            what="dan's update coalesced into carol's request",
            stack=stack,
        )
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    _wait(lambda: _settled(shared.pk, dan_seq), what="the merged request", stack=stack)

    # Then what dan sees holds nothing of carol's private session
    stored = _rest_suggestions(stack, shared.pk, dan_token)
    assert not _leaks(stored, private_session=private), stored
    assert all(s["content"].get("session_id", str(shared.pk)) == str(shared.pk) for s in stored), stored
    _quiesce(stack)


def _plant(user: Any, title: str, actions: list[str]) -> None:
    """A session of ``user`` with these actions, written with the AI off (nothing is inferred for it)."""
    from apps.context import services
    from apps.context.services import EventInput

    services.preferences_update(user=user, ai_enabled=False)
    session = services.session_create(owner=user, title=title)
    services.context_event_append(
        session=session, author=user, events=[EventInput("user_action", {"action": a}) for a in actions]
    )


def _plant_vocabulary_attack() -> None:
    """Three users share open_doc -> edit; mallory plants a link and a long name; one user has a private name."""
    mallory, _ = _user("tenant-mallory")
    _plant(mallory, "Mallory", ["open_doc", PLANTED_LINK, "open_doc", PLANTED_LONG] * 15)
    insider, _ = _user("tenant-insider")
    _plant(insider, "Insider", ["open_doc", PRIVATE_NAME] * 10)
    for n in range(3):
        common, _ = _user(f"tenant-common{n}")
        _plant(common, f"Common {n}", ["open_doc", "edit", "save"])


def test_next_action_suggestions_offer_only_the_shared_vocabulary(stack):
    # Given planted and private names beside a vocabulary three users share
    _plant_vocabulary_attack()
    erin, erin_token = _user("tenant-erin")
    session = _session(erin, "Erin")

    # When erin opens a document (the live baseline ranks what follows open_doc)
    [seq] = _append(stack, session.pk, erin_token, [{"event_type": "user_action", "data": {"action": "open_doc"}}])
    _wait(lambda: _settled(session.pk, seq), what="erin's request", stack=stack)
    actions = [
        s["content"]["action"] for s in _rest_suggestions(stack, session.pk, erin_token) if s["kind"] == "next_action"
    ]

    # Then no planted or private name is offered, only the shared ones
    assert PLANTED_LINK not in actions, actions
    assert all(len(a) <= 64 for a in actions), [a[:80] for a in actions]
    assert PRIVATE_NAME not in actions, actions
    assert "edit" in actions, actions
    _quiesce(stack)


def test_suggestions_stored_before_the_rule_are_not_shown(stack):
    # Given a shared session holding a related suggestion stored earlier from another session
    from django.utils import timezone

    from apps.ai.models import InferenceRequest, Suggestion

    owner, owner_token = _user("tenant-frank")
    viewer, viewer_token = _user("tenant-grace")
    private = _session(owner, "Frank private")
    shared = _session(owner, "Shared", **{viewer.username: "viewer"})
    request = InferenceRequest.objects.create(session=shared, status="done", queued_at=timezone.now())
    content = {"text": SECRET, "session_id": str(private.pk), "seq": 1, "same_session": False}
    leaked = Suggestion.objects.create(
        request=request, session=shared, kind="related_context", content={**content, "event_type": "context_update"}
    )

    # When the viewer lists the session's suggestions, reads the request and sends feedback on it
    headers = {"Authorization": f"Token {viewer_token}"}
    listed = _rest_suggestions(stack, shared.pk, viewer_token)
    detail = httpx.get(f"{stack.http}/api/v1/inference-requests/{request.pk}/", headers=headers, timeout=30)
    feedback = httpx.post(
        f"{stack.http}/api/v1/suggestions/{leaked.pk}/feedback/",
        json={"verdict": "accept"},
        headers=headers,
        timeout=30,
    )

    # Then the stored cross-session suggestion is shown nowhere
    assert not _leaks(listed, private_session=private), listed
    assert detail.status_code == 200 and not _leaks(detail.json()["suggestions"], private_session=private), detail.text
    assert feedback.status_code == 404, feedback.text
    assert _rest_suggestions(stack, shared.pk, owner_token) == []
