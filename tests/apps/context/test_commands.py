from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("create_api_token", *args, stdout=out)
    return out.getvalue()


def test_creates_user_and_prints_a_working_token_last():
    output = run("dana")
    token = output.strip().splitlines()[-1]
    user = get_user_model().objects.get(username="dana")
    assert Token.objects.get(user=user).key == token
    assert not user.is_staff and not user.has_usable_password()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/sessions/").status_code == 200


def test_existing_user_keeps_its_token_and_staff_flag_is_set():
    first = run("erin").strip().splitlines()[-1]
    second = run("erin", "--staff").strip().splitlines()[-1]
    assert first == second
    assert get_user_model().objects.get(username="erin").is_staff


def test_invalid_username_is_a_clear_error():
    with pytest.raises(CommandError, match="Invalid username"):
        run("bad name!")
