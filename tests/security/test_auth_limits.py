"""Guessing is refused: failed logins and rejected tokens are limited, and adding a participant tells no names.

Against the platform's own web process (the Procfile's line): past the
failed-authentication limits (apps/ops/lockout.py) the server answers 429 with
``Retry-After``, even to the right password or a valid token, and alike whether
the name exists; nothing logs in while locked.
"""

from __future__ import annotations

import re

import httpx
import pytest
from django.contrib.auth import get_user_model

from apps.context.models import Participant
from tests.security.conftest import auth

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WINDOW = 300
PER_USERNAME = 3
PER_IP = 8
LIMITS = {
    # One gunicorn process: a rejected-credential lock is kept per process (apps/ops/lockout.py;
    # each process locks the address at its own first failure past the limit).
    "WEB_WORKERS": "1",
    "AUTH_FAILURE_WINDOW_SECONDS": str(WINDOW),
    "AUTH_FAILURES_PER_USERNAME": str(PER_USERNAME),
    "AUTH_FAILURES_PER_IP": str(PER_IP),
}
PASSWORD = "pw-Secret-123"


def _admin_login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    form = client.get("/admin/login/?next=/admin/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    return client.post(
        "/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": csrf, "username": username, "password": password, "next": "/admin/"},
    )


def _assert_locked(response: httpx.Response) -> None:
    assert response.status_code == 429, (response.status_code, response.text[:300])
    assert 1 <= int(response.headers["Retry-After"]) <= WINDOW
    assert response.json()["code"] == "rate_limited"


def test_admin_login_is_locked_after_wrong_passwords_alike_for_a_missing_name(start_web, make_user):
    # given a staff user, and a server allowing 3 wrong passwords per name
    make_user("chief", staff=True, password=PASSWORD)
    web = start_web(**LIMITS)

    with httpx.Client(base_url=web.http, timeout=30) as client:
        # when someone tries wrong passwords for it, then the right one
        wrong = [_admin_login(client, "chief", f"guess-{i}").status_code for i in range(PER_USERNAME)]
        right = _admin_login(client, "chief", PASSWORD)
        # then the guesses were refused by the form, and the right password is not even tried
        assert wrong == [200] * PER_USERNAME
        _assert_locked(right)
        assert "sessionid" not in client.cookies
        assert client.get("/admin/").status_code == 302, "not logged in"

    with httpx.Client(base_url=web.http, timeout=30) as client:
        # and a name that does not exist is answered alike
        ghost = [_admin_login(client, "no-such-admin", f"guess-{i}").status_code for i in range(PER_USERNAME)]
        locked = _admin_login(client, "no-such-admin", "anything")
        assert ghost == wrong
        _assert_locked(locked)
        assert locked.json() == right.json() | {"details": locked.json()["details"]}


def test_password_guesses_across_names_from_one_address_are_refused(start_web, make_user):
    make_user("target", password=PASSWORD)
    web = start_web(**LIMITS)

    answers = []
    with httpx.Client(base_url=web.http, timeout=30) as client:
        for i in range(PER_IP):
            name = f"user-{i}" if i < PER_IP - 1 else "target"
            answers.append(client.post("/api/v1/auth/token/", json={"username": name, "password": "x"}).status_code)
        right = client.post("/api/v1/auth/token/", json={"username": "target", "password": PASSWORD})

    assert answers == [400] * PER_IP
    _assert_locked(right)
    assert "token" not in right.json()


def test_rejected_tokens_from_one_address_lock_its_credentials_out(start_web, user):
    from rest_framework.authtoken.models import Token

    valid = Token.objects.get_or_create(user=user)[0].key
    web = start_web(**LIMITS)

    with httpx.Client(base_url=web.http, timeout=30) as client:
        assert client.get("/api/v1/sessions/", headers=auth(valid)).status_code == 200
        guesses = [client.get("/api/v1/sessions/", headers=auth(f"{i:040x}")).status_code for i in range(PER_IP + 1)]
        after = client.get("/api/v1/sessions/", headers=auth(valid))
        anonymous = client.get("/healthz")

    assert guesses[:PER_IP] == [401] * PER_IP
    _assert_locked(after)
    assert anonymous.status_code == 200, "requests without credentials are not locked"


def test_adding_a_missing_user_and_one_who_cannot_be_added_answer_alike(start_web, team):
    # given the owner of a session, an inactive account and a name nobody has
    get_user_model().objects.create_user(username="retired", password=PASSWORD, is_active=False)
    web = start_web()
    url = f"{web.http}/api/v1/sessions/{team['sid']}/participants/"
    before = set(Participant.objects.filter(session=team["session"]).values_list("user__username", flat=True))

    # when the owner tries to add each
    answers = {
        name: httpx.post(url, json={"username": name, "role": "viewer"}, headers=auth(team["tokens"]["alice"]))
        for name in ("nobody-by-this-name", "retired")
    }

    # then both are refused with the same answer (the name itself aside), and nothing changed
    shapes = {name: (r.status_code, r.text.replace(name, "NAME")) for name, r in answers.items()}
    assert shapes["nobody-by-this-name"] == shapes["retired"], shapes
    assert answers["retired"].status_code in (400, 404)
    after = set(Participant.objects.filter(session=team["session"]).values_list("user__username", flat=True))
    assert after == before


def test_adding_the_owner_a_missing_and_an_inactive_user_answer_alike_and_a_real_add_works(start_web, team, make_user):
    # given the owner of a session, an inactive account, a name nobody has, and a user who may join
    get_user_model().objects.create_user(username="retired", password=PASSWORD, is_active=False)
    make_user("carol")
    web = start_web()
    url = f"{web.http}/api/v1/sessions/{team['sid']}/participants/"
    owner = auth(team["tokens"]["alice"])
    before = set(Participant.objects.filter(session=team["session"]).values_list("user__username", "role"))

    # when the owner tries to add a missing name, an inactive user and the owner herself
    refused = {
        name: httpx.post(url, json={"username": name, "role": "viewer"}, headers=owner)
        for name in ("nobody-by-this-name", "retired", "alice")
    }

    # then each is refused with one and the same answer, and nothing changed
    answers = {name: (r.status_code, r.json()) for name, r in refused.items()}
    assert len({repr(a) for a in answers.values()}) == 1, answers
    assert answers["alice"][0] == 400
    assert all(name not in r.text for name, r in refused.items())
    after = set(Participant.objects.filter(session=team["session"]).values_list("user__username", "role"))
    assert after == before

    # and adding someone who may join still works
    added = httpx.post(url, json={"username": "carol", "role": "editor"}, headers=owner)
    assert added.status_code == 201, added.text
    assert added.json()["username"] == "carol"
    assert Participant.objects.filter(session=team["session"], user__username="carol", role="editor").exists()
