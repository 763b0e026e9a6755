"""AI request quotas against the real ASGI server: floods are refused with 429, people are served.

Two real web processes (uvicorn, the platform's ASGI application) over the
real PostgreSQL and Redis: one with the default quotas, one with tight ones so
a session's quota can be reached in a few requests. No worker runs, so every
accepted question stays pending: what is counted is exactly what was stored.
The automatic path (context updates -> relay -> ``ai_trigger`` subscriber)
runs the real relay and subscriber processes with a tight per-author quota.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.support.processes import child_env
from tests.support.services import free_port, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TIGHT_USER_RATE = 10
TIGHT_SESSION_RATE = 15
TIGHT_AUTO_RATE = 5


@dataclass
class Web:
    url: str
    popen: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def _spawn(log_path: Path, command: list[str], **env: str) -> subprocess.Popen:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=child_env(**env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _start_web(log_dir: Path, name: str, **env: str) -> Web:
    port = free_port()
    log_path = log_dir / f"{name}.log"
    command = [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1"]
    popen = _spawn(log_path, [*command, "--port", str(port), "--log-level", "warning"], **env)
    web = Web(url=f"http://127.0.0.1:{port}", popen=popen, log_path=log_path)
    try:
        wait_for_port(port, timeout=90)
    except BaseException:
        web.stop()
        raise
    return web


@pytest.fixture(scope="module")
def servers(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[dict[str, Web]]:
    log_dir = tmp_path_factory.mktemp("quota-web")
    with django_db_blocker.unblock():
        webs = {"default": _start_web(log_dir, "default")}
        try:
            webs["tight"] = _start_web(
                log_dir,
                "tight",
                THROTTLE_AI_QUERY_USER_RATE=f"{TIGHT_USER_RATE}/min",
                THROTTLE_AI_QUERY_SESSION_RATE=f"{TIGHT_SESSION_RATE}/min",
                THROTTLE_AI_AUTO_USER_RATE=f"{TIGHT_AUTO_RATE}/min",
            )
        except BaseException:
            webs["default"].stop()
            raise
    yield webs
    for web in webs.values():
        web.stop()


@pytest.fixture
def event_path(transactional_db, tmp_path) -> Iterator[dict[str, Web]]:
    """The relay and the subscribers (with the tight automatic quota), for the tests that append.

    Function-scoped: they are stopped before the test database is flushed, so
    the flush races none of their transactions.
    """
    from tests.integration.ai.conftest import purge_realtime_queue

    log_dir = tmp_path
    env = {"THROTTLE_AI_AUTO_USER_RATE": f"{TIGHT_AUTO_RATE}/min", "LOG_LEVEL": "INFO"}
    commands = {
        "relay": [sys.executable, "manage.py", "run_outbox_relay", "--poll-interval", "0.5"],
        "subscribers": [sys.executable, "manage.py", "run_event_subscribers"],
    }
    procs: dict[str, Web] = {}
    try:
        for name, command in commands.items():
            log_path = log_dir / f"{name}.log"
            procs[name] = Web(url="", popen=_spawn(log_path, command, **env), log_path=log_path)
        for name, ready in (("relay", "outbox relay started"), ("subscribers", "subscribers ready")):
            deadline = time.monotonic() + 90
            while ready not in procs[name].log_path.read_text(errors="replace"):
                assert procs[name].popen.poll() is None and time.monotonic() < deadline, procs[name].log()
                time.sleep(0.2)
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()
        purge_realtime_queue()


def _user(username: str) -> tuple[Any, str]:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user(username=username, password="pw-Secret-123")
    return user, Token.objects.create(user=user).key


def _shared_session(owner: Any, **members: str) -> Any:
    from apps.context import services

    session = services.session_create(owner=owner, title="Quotas")
    for username, role in members.items():
        services.participant_add(session=session, actor=owner, username=username, role=role)
    return session


def _ask(client: httpx.Client, session_id: Any, token: str, query: str) -> httpx.Response:
    return client.post(
        f"/api/v1/sessions/{session_id}/suggestions/",
        json={"query": query},
        headers={"Authorization": f"Token {token}"},
    )


def _stored_queries(session: Any) -> int:
    from apps.ai.models import InferenceRequest

    return InferenceRequest.objects.filter(session=session, kind="query").count()


def _inside_one_window(period: float = 60.0, needed: float = 10.0) -> None:
    """Wait, if need be, until the fixed quota window has ``needed`` seconds left, so a burst counts in one window."""
    while time.time() % period > period - needed:
        time.sleep(0.2)


def test_interactive_questions_are_served_and_identical_pending_ones_merge(servers):
    # Given a viewer of someone else's session, with the default quotas
    owner, _ = _user("quota-owner1")
    viewer, viewer_token = _user("quota-viewer1")
    session = _shared_session(owner, **{viewer.username: "viewer"})

    with httpx.Client(base_url=servers["default"].url, timeout=30) as client:
        # When they ask distinct questions, about three a second
        paced = []
        for n in range(30):
            started = time.monotonic()
            paced.append(_ask(client, session.pk, viewer_token, f"Question number {n}?").status_code)
            time.sleep(max(0.0, 0.33 - (time.monotonic() - started)))
        # And then the same question 40 times while it is pending
        same = [_ask(client, session.pk, viewer_token, "What did we decide about the budget?") for _ in range(40)]

    # Then every interactive question is served
    assert paced == [202] * 30, paced
    # And the repeats are all accepted and answered by one request: one row, one task
    assert {r.status_code for r in same} == {202}, [r.text for r in same if r.status_code != 202][:3]
    assert len({r.json()["id"] for r in same}) == 1
    assert _stored_queries(session) == 31


def test_a_flood_of_distinct_queries_hits_the_users_quota_with_retry_after(servers):
    # Given a viewer flooding a session with distinct questions (tight quotas)
    owner, _ = _user("quota-owner3")
    viewer, viewer_token = _user("quota-viewer3")
    session = _shared_session(owner, **{viewer.username: "viewer"})

    # When they ask far more than the per-user quota in a burst
    _inside_one_window()
    with httpx.Client(base_url=servers["tight"].url, timeout=30) as client:
        answers = [_ask(client, session.pk, viewer_token, f"Flood {n}?") for n in range(TIGHT_USER_RATE + 10)]

    # Then the quota's worth is accepted and the rest refused with 429 and Retry-After
    statuses = [r.status_code for r in answers]
    assert statuses.count(202) == TIGHT_USER_RATE, statuses
    refused = [r for r in answers if r.status_code == 429]
    assert len(refused) == 10, statuses
    for response in refused:
        retry_after = int(response.headers["Retry-After"])
        assert 1 <= retry_after <= 61, response.headers
        body = response.json()
        assert body["code"] == "rate_limited" and body["details"]["retry_after_seconds"] == retry_after, body
    # And nothing was stored for the refused ones
    assert _stored_queries(session) == TIGHT_USER_RATE


def test_a_sessions_quota_holds_across_its_participants_and_outsiders_cannot_spend_it(servers):
    # Given two participants, each within their own quota, and an outsider
    owner, owner_token = _user("quota-owner4")
    editor, editor_token = _user("quota-editor4")
    _, outsider_token = _user("quota-outsider4")
    session = _shared_session(owner, **{editor.username: "editor"})

    _inside_one_window()
    with httpx.Client(base_url=servers["tight"].url, timeout=30) as client:
        # When the outsider floods the session's endpoint first
        outsider = [_ask(client, session.pk, outsider_token, f"Peek {n}?") for n in range(TIGHT_SESSION_RATE + 5)]
        # And the participants together ask more than the session's quota
        first = [_ask(client, session.pk, owner_token, f"Owner {n}?") for n in range(TIGHT_USER_RATE)]
        second = [_ask(client, session.pk, editor_token, f"Editor {n}?") for n in range(TIGHT_USER_RATE)]

    # Then the outsider got only 404s and spent none of the session's quota
    assert {r.status_code for r in outsider} == {404}, [r.status_code for r in outsider]
    assert [r.status_code for r in first] == [202] * TIGHT_USER_RATE
    # And the session's quota is what was accepted; the rest got 429 with Retry-After
    statuses = [r.status_code for r in second]
    assert statuses.count(202) == TIGHT_SESSION_RATE - TIGHT_USER_RATE, statuses
    assert statuses.count(429) == 2 * TIGHT_USER_RATE - TIGHT_SESSION_RATE, statuses
    assert all("Retry-After" in r.headers for r in second if r.status_code == 429)
    assert _stored_queries(session) == TIGHT_SESSION_RATE


def test_a_flood_of_automatic_requests_is_bounded_per_author_over_every_session(servers, event_path):
    # Given an author with many sessions (no coalescing between sessions) and another user
    from apps.ai.models import InferenceRequest
    from apps.eventbus.models import ProcessedEvent

    flooder, flooder_token = _user("quota-flooder6")
    other, other_token = _user("quota-other6")
    sessions = [_shared_session(flooder) for _ in range(TIGHT_AUTO_RATE + 7)]
    bystander = _shared_session(other)

    # When the other user writes one update, and the author one in every session, within one window
    # (the other user's first: what it gets must not depend on where it falls in the flood's batches)
    _inside_one_window(needed=30)
    with httpx.Client(base_url=servers["tight"].url, timeout=30) as client:
        for session, token in [(bystander, other_token), *((s, flooder_token) for s in sessions)]:
            response = client.post(
                f"/api/v1/sessions/{session.pk}/events/",
                json={"event_type": "context_update", "data": {"text": "Status update."}},
                headers={"Authorization": f"Token {token}"},
            )
            assert response.status_code == 201, response.text
    deadline = time.monotonic() + 120
    while ProcessedEvent.objects.filter(subscriber="ai_trigger").count() < len(sessions) + 1:
        assert time.monotonic() < deadline, event_path["subscribers"].log()
        time.sleep(0.1)

    # Then the author got their quota's worth of automatic requests, and the other user theirs
    flooded = InferenceRequest.objects.filter(session__in=sessions, kind="auto").count()
    assert flooded == TIGHT_AUTO_RATE, flooded
    assert InferenceRequest.objects.filter(session=bystander, kind="auto").count() == 1
