"""The playground in a real browser: sign in, create a session, the live stream, presence, a drop and
``resume`` without a gap, an explicit query, suggestions arriving, and feedback from the buttons."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.browser.conftest import ASYNC_UNSAFE
from tests.integration.ai.conftest import StackProc, stack_env
from tests.support.services import wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PASSWORD = "pw-Secret-123"
TIMEOUT_MS = 30_000


def _user(username: str) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username=username, password=PASSWORD)


def _token(user: Any) -> str:
    from rest_framework.authtoken.models import Token

    return Token.objects.get_or_create(user=user)[0].key


def _restart_web(stack: Any, log_dir: Any) -> None:
    """A new uvicorn on the same port, as after a deploy or a crash."""
    log_path = log_dir / "web-restarted.log"
    log = log_path.open("wb")
    command = [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1"]
    command += ["--port", str(stack.port), "--ws", "websockets", "--log-level", "warning", "--no-access-log"]
    popen = subprocess.Popen(
        command,
        env={k: v for k, v in stack_env(AI_DEVICE="cpu", ALLOWED_ORIGINS="*").items() if k != ASYNC_UNSAFE},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.procs["web"] = StackProc(name="web", popen=popen, log_path=log_path, _log=log)
    wait_for_port(stack.port, timeout=90)


def _off_the_loop(fn: Any, **kwargs: Any) -> Any:
    """Run a service call on a thread of its own: Playwright's event loop runs in this one, and the
    services' after-commit broadcast (``async_to_sync``) must not run inside a running loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, **kwargs).result(timeout=30)


def _rest(stack: Any, user: Any, method: str, path: str, body: dict[str, Any]) -> None:
    response = httpx.request(
        method, f"{stack.http}/api/v1{path}", json=body, headers={"Authorization": f"Token {_token(user)}"}, timeout=20
    )
    assert response.status_code in (200, 201), response.text


def _post_note(stack: Any, user: Any, session: Any, text: str) -> None:
    _rest(stack, user, "POST", f"/sessions/{session.pk}/events/", {"event_type": "note", "data": {"text": text}})


def _note(session: Any, author: Any, text: str) -> None:
    from apps.context import services

    events = [services.EventInput("note", {"text": text})]
    _off_the_loop(services.context_event_append, session=session, author=author, events=events)


def _seqs(page: Any) -> list[int]:
    return [int(s) for s in page.locator("#stream li").evaluate_all("items => items.map(i => i.dataset.seq)")]


def test_a_person_follows_a_live_session_through_a_drop_and_gets_suggestions(stack, browser, tmp_path):
    from apps.ai.models import SuggestionFeedback
    from apps.context.models import Session

    alice, bob = _user("pg_alice"), _user("pg_bob")
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{stack.http}/playground/")

    # Sign in with username and password; create a session from the page.
    page.fill("#login-username", "pg_alice")
    page.fill("#login-password", PASSWORD)
    page.click("#login-button")
    page.fill("#create-title", "Playground trip")
    page.click("#create-button")
    page.wait_for_selector("#connection.online")
    session = Session.objects.get(title="Playground trip")
    assert session.owner_id == alice.pk
    _rest(stack, alice, "POST", f"/sessions/{session.pk}/participants/", {"username": "pg_bob", "role": "editor"})

    # Typed in the page: stored in order and shown.
    for text in ("Book the train to Lyon", "Hotel near the station"):
        page.fill("#compose-input", text)
        page.click("#compose-button")
    page.wait_for_selector("#stream li[data-seq='2']")
    assert list(session.events.order_by("seq").values_list("data__text", flat=True)) == [
        "Book the train to Lyon",
        "Hotel near the station",
    ]

    # Another participant, over REST: live on the page.
    _rest(
        stack,
        bob,
        "POST",
        f"/sessions/{session.pk}/events/",
        {"event_type": "note", "data": {"text": "Pack an umbrella"}},
    )
    page.wait_for_selector("#stream li[data-seq='3']")
    assert "Pack an umbrella" in page.inner_text("#stream li[data-seq='3']")
    assert page.locator("#online li[data-user='pg_alice']").count() == 1

    # The network drops (the server goes away): a banner shows; events stored meanwhile arrive after it.
    stack.procs["web"].stop()
    page.wait_for_selector("#banner:not([hidden])")
    assert "Reconnecting" in page.inner_text("#banner")
    for text in ("Museum on Sunday", "Dinner at eight"):
        _note(session, bob, text)
    _restart_web(stack, tmp_path)
    page.wait_for_selector("#banner[hidden]", state="attached")
    page.wait_for_selector("#stream li[data-seq='5']")
    assert _seqs(page) == [1, 2, 3, 4, 5]  # no gap, no duplicate
    _post_note(stack, bob, session, "Live again")
    page.wait_for_selector("#stream li[data-seq='6']")
    assert _seqs(page) == [1, 2, 3, 4, 5, 6]

    # An explicit query: the AI state shows, suggestions arrive, Accept sends feedback.
    page.fill("#query-input", "where do we stay in Lyon?")
    page.click("#query-button")
    page.wait_for_selector("#suggestions li", timeout=120_000)
    suggestion_id = page.locator("#suggestions li").first.get_attribute("data-suggestion-id")
    # This suggestion by its id: more may arrive meanwhile and take the list's first place.
    chosen = page.locator(f"#suggestions li[data-suggestion-id='{suggestion_id}']")
    chosen.locator("button.accept").click()
    chosen.locator(".verdict", has_text="accepted").wait_for()
    feedback = SuggestionFeedback.objects.get(suggestion_id=suggestion_id)
    assert (feedback.user_id, feedback.verdict) == (alice.pk, "accept")
    assert errors == []


def test_a_wrong_password_or_a_stranger_session_is_refused_on_the_page(stack, browser):
    from apps.context import services

    owner = _user("pg_owner")
    _user("pg_stranger")
    private = _off_the_loop(services.session_create, owner=owner, title="Private plans")
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{stack.http}/playground/")
    page.fill("#login-username", "pg_stranger")
    page.fill("#login-password", "not-the-password")
    page.click("#login-button")
    page.wait_for_selector("#error:not([hidden])")
    assert "Login failed" in page.inner_text("#error")
    assert page.is_visible("#auth-panel")

    page.fill("#login-password", PASSWORD)
    page.click("#login-button")
    page.wait_for_selector("#session-panel:not([hidden])")
    assert "Private plans" not in page.inner_text("#session-list")
    page.fill("#join-id", str(private.pk))
    page.click("#join-button")
    page.wait_for_selector("#error:not([hidden])")
    assert "Could not open the session" in page.inner_text("#error")
    assert page.locator("#stream li").count() == 0
