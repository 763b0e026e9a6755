"""The API under the real ASGI server: several client processes append at once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from apps.context import services
from apps.context.models import ContextEvent
from tests.conftest import REPO_ROOT

CLIENT = r"""
import json, sys, httpx
base, token, session, writer, count, key = sys.argv[1:7]
out = []
with httpx.Client(base_url=base, headers={"Authorization": f"Token {token}"}, timeout=30) as c:
    for i in range(int(count)):
        body = {"event_type": "note", "data": {"w": writer, "i": i}} if i % 2 else {
            "events": [{"event_type": "note", "data": {"w": writer, "i": i, "k": k}} for k in range(3)]}
        r = c.post(f"/api/v1/sessions/{session}/events/", json=body)
        r.raise_for_status()
        got = r.json()
        out += [e["seq"] for e in got["events"]] if "events" in got else [got["seq"]]
    if key != "-":
        r = c.post(f"/api/v1/sessions/{session}/events/", json={"event_type": "note", "data": {"same": 1}},
                   headers={"Idempotency-Key": key})
        out.append(("idem", r.status_code))
print(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def asgi_server(django_db_setup, django_db_blocker, tmp_path_factory):
    """One uvicorn for the module, on this run's test database, vhost and Redis prefix."""
    import os

    from django.conf import settings
    from django.db import connection

    db = connection.settings_dict
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="project.settings.test",
        TEST_RUN_ID=settings.TEST_RUN_ID,
        DATABASE_URL=(
            f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        ),
        CONTEXT_ENGINE_SKIP_DOTENV="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    port = _free_port()
    log = (tmp_path_factory.mktemp("uvicorn") / "server.log").open("w+b")
    uvicorn = str(Path(sys.executable).parent / "uvicorn")
    proc = subprocess.Popen(
        [uvicorn, "project.asgi:application", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/api/v1/nothing/", timeout=2).status_code == 404:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        log.seek(0)
        pytest.fail(f"uvicorn did not start: {log.read().decode()[-2000:]}")
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.mark.integration
def test_client_processes_appending_at_once_get_gap_free_seq(
    asgi_server, transactional_db, make_user, api_client_for, user
):
    session = services.session_create(owner=user, title="processes")
    writers = [user]
    for i in range(3):
        writer = make_user(f"proc{i}")
        services.participant_add(session=session, actor=user, username=writer.username, role="editor")
        writers.append(writer)
    tokens = [api_client_for(w)._credentials["HTTP_AUTHORIZATION"].split()[1] for w in writers]
    rounds = 10
    clients = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLIENT,
                asgi_server,
                token,
                str(session.pk),
                str(n),
                str(rounds),
                "same-key" if n == 0 else "-",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, token in enumerate(tokens)
    ]
    outputs = []
    for client in clients:
        stdout, stderr = client.communicate(timeout=180)
        assert client.returncode == 0, stderr[-2000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))

    per_writer = (rounds // 2) * 3 + rounds // 2
    total = len(writers) * per_writer + 1  # + the one idempotent write
    seqs = list(ContextEvent.objects.filter(session=session).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, total + 1))
    for out in outputs:
        mine = [s for s in out if isinstance(s, int)]
        assert mine == sorted(mine)
    assert ["idem", 201] in outputs[0]


@pytest.mark.integration
def test_errors_under_the_real_server(asgi_server, transactional_db, api_client_for, user):
    token = api_client_for(user)._credentials["HTTP_AUTHORIZATION"]
    session = services.session_create(owner=user, title="errors")
    with httpx.Client(base_url=asgi_server, headers={"Authorization": token}, timeout=10) as c:
        events = f"/api/v1/sessions/{session.pk}/events/"
        assert c.get("/api/v1/unknown/").json()["code"] == "not_found"
        bad = c.post(events, content=b"{oops", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json()["code"] == "malformed_request"
        big = c.post(
            events,
            content=b'{"event_type":"note","data":{"t":"' + b"x" * 1_100_000 + b'"}}',
            headers={"Content-Type": "application/json"},
        )
        assert big.status_code == 413 and big.json()["code"] == "payload_too_large"
        first = c.post(events, json={"event_type": "note"}, headers={"Idempotency-Key": "k"})
        again = c.post(events, json={"event_type": "note"}, headers={"Idempotency-Key": "k"})
        assert first.status_code == again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
        assert c.post(events, json={"event_type": "user_action"}, headers={"Idempotency-Key": "k"}).status_code == 422
    assert ContextEvent.objects.filter(session=session).count() == 1
