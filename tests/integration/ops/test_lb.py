"""HAProxy (Debian package, docker/haproxy.cfg) in front of two real uvicorn instances."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

pytestmark = [pytest.mark.integration]


class Load:
    """Steady load from a few client threads; records who answered and every failure."""

    def __init__(self, base_url: str, *, paths: list[tuple[str, dict[str, str]]], threads: int = 4) -> None:
        self.base_url, self.paths, self.threads = base_url, paths, threads
        self.served: Counter[str] = Counter()
        self.failures: list[str] = []
        self.total = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=15) as client:
            i = index
            while not self._stop.is_set():
                path, headers = self.paths[i % len(self.paths)]
                i += 1
                try:
                    response = client.get(path, headers=headers)
                    ok = response.status_code == 200
                    who = response.json().get("instance") if path == "/healthz" and ok else None
                    error = None if ok else f"{path}: HTTP {response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    who, error = None, f"{path}: {exc.__class__.__name__}: {exc}"
                with self._lock:
                    self.total += 1
                    if error:
                        self.failures.append(error)
                    if who:
                        self.served[who] += 1

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)


def test_requests_spread_evenly_across_instances(lb):
    haproxy = lb
    served: Counter[str] = Counter()
    ids: set[str] = set()
    with httpx.Client(base_url=haproxy.url, timeout=10) as client:
        for _ in range(400):
            response = client.get("/healthz")
            assert response.status_code == 200
            served[response.json()["instance"]] += 1
            ids.add(response.headers["X-Correlation-ID"])

    # HAProxy stamps a request id on requests that come without one; the app keeps and echoes it.
    assert len(ids) == 400 and all("_" in i and ":" in i for i in ids), sorted(ids)[:3]

    assert set(served) == {"web1", "web2"}
    for share in (served["web1"] / 400, served["web2"] / 400):
        assert abs(share - 0.5) <= 0.05, served


def test_restarting_one_instance_under_load_fails_no_request(lb, web_pair, transactional_db, make_user):
    haproxy = lb
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=make_user("lb-user"))
    paths = [("/healthz", {}), ("/api/v1/sessions/", {"Authorization": f"Token {token.key}"})]
    web1 = web_pair[0]

    with Load(haproxy.url, paths=paths) as load:
        time.sleep(1.5)
        web1.stop()  # SIGTERM: uvicorn finishes in-flight requests, HAProxy retries the refused ones
        haproxy.wait_status("web1", "DOWN", timeout=10)
        time.sleep(1.0)
        web1.start()
        haproxy.wait_status("web1", "UP", timeout=30)
        before = load.served["web1"]
        time.sleep(2.0)
        after = load.served["web1"]

    assert load.failures == [], (load.failures[:5], web1.log(), haproxy.log())
    assert load.total > 200
    assert after > before, "web1 takes traffic again once HAProxy sees it healthy"


def test_draining_an_instance_moves_new_requests_away(lb):
    haproxy = lb
    haproxy.command("set server web/web1 state drain")
    try:
        with httpx.Client(base_url=haproxy.url, timeout=10) as client:
            who = Counter(client.get("/healthz").json()["instance"] for _ in range(40))
    finally:
        haproxy.command("set server web/web1 state ready")

    assert who == Counter({"web2": 40})


def test_an_instance_that_is_not_ready_leaves_rotation(lb, web_pair):
    # /readyz is HAProxy's health check: web2 answering 503 is taken out although its port is open.
    haproxy = lb
    web2 = web_pair[1]
    healthy_env = web2.env
    web2.stop()
    web2.env = {**healthy_env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    try:
        web2.start()
        haproxy.wait_status("web2", "DOWN", timeout=15)

        with httpx.Client(base_url=haproxy.url, timeout=10) as client:
            who = Counter(client.get("/healthz").json()["instance"] for _ in range(20))
    finally:
        web2.stop()
        web2.env = healthy_env
        web2.start()
        haproxy.wait_status("web2", "UP", timeout=30)

    assert who == Counter({"web1": 20})
