"""The playground's files: served with a strict policy, and nothing loaded from another origin."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/playground/", "text/html"),
        ("/playground/playground.js", "text/javascript"),
        ("/playground/playground.css", "text/css"),
    ],
)
def test_each_file_is_served_with_a_same_origin_policy(client, path, content_type):
    response = client.get(path)
    assert response.status_code == 200
    assert response["Content-Type"].startswith(content_type)
    policy = response["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    body = response.content.decode()
    # No CDN, no external font or script: the page works offline.
    assert re.findall(r"https?://", body) == []


def test_the_token_travels_in_a_subprotocol_never_in_the_url(client):
    script = client.get("/playground/playground.js").content.decode()
    assert '"token." + state.token' in script
    assert "?token=" not in script


def test_only_get_is_served(client):
    assert client.post("/playground/").status_code == 405
