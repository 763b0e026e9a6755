"""Probes are cheap and safe: /readyz is no lever, /metrics is protected by default.

Against the platform's own web process (the Procfile's line) whose PostgreSQL,
Redis and RabbitMQ connections all pass through counting TCP forwarders, so the
test sees every connection the server opens and can cut them:

* a burst of unauthenticated /readyz probes costs one run of the checks and
  opens at most one connection per dependency (before: three per probe);
* later probes reuse those connections; a connection cut between probes is
  reopened without a false alarm; a dependency that goes away is reported
  within ``READINESS_CACHE_SECONDS`` plus the check timeout, and its recovery too;
* compose and Kubernetes set ``METRICS_TOKEN``; production settings with an
  empty token fail ``manage.py check --deploy``; with a token set, /metrics
  (and a worker's metrics port) answers only to its bearer.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml
from django.conf import settings
from django.db import connection

from tests.support.processes import REPO_ROOT

pytestmark = [pytest.mark.integration]

BURST = 40
# Cache time and per-check timeout the web process runs with (the defaults).
CACHE_SECONDS = 1.0
CHECK_TIMEOUT = 2.0


class CountingProxy:
    """A TCP forwarder to one local service: counts accepted connections; ``cut`` drops the open ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self.refusing = False
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                refusing = self.refusing
            if refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(client, upstream, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, pair), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pair: tuple) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        self._drop(pair)

    def _drop(self, pair: tuple) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self, *, refuse: bool) -> None:
        """Drop every open connection; with ``refuse`` also close new ones at once (the service is gone)."""
        with self._lock:
            self.refusing = refuse
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair)

    def restore(self) -> None:
        with self._lock:
            self.refusing = False

    def close(self) -> None:
        self._server.close()
        self.cut(refuse=True)


@pytest.fixture
def proxies(transactional_db) -> Iterator[dict[str, CountingProxy]]:
    db = connection.settings_dict
    redis_port = int(settings.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    made = {
        "database": CountingProxy(int(db["PORT"] or 5432)),
        "redis": CountingProxy(redis_port),
        "broker": CountingProxy(5672),
    }
    yield made
    for proxy in made.values():
        proxy.close()


WEB_THREADS = 4


@pytest.fixture
def web_behind_proxies(start_web, proxies):
    db = connection.settings_dict
    redis_db = settings.REDIS_URL.rsplit("/", 1)[1]
    # One gunicorn process: readiness is cached per process, and this counts one process's connections.
    return start_web(
        WEB_WORKERS="1",
        WEB_THREADS=str(WEB_THREADS),
        DATABASE_URL=f"postgres://{db['USER'] or 'postgres'}@127.0.0.1:{proxies['database'].port}/{db['NAME']}",
        REDIS_URL=f"redis://127.0.0.1:{proxies['redis'].port}/{redis_db}",
        TEST_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{proxies['broker'].port}/{settings.TEST_VHOST}",
    )


def _counts(proxies: dict[str, CountingProxy]) -> dict[str, int]:
    return {name: proxy.accepted for name, proxy in proxies.items()}


def _opened(proxies: dict[str, CountingProxy], before: dict[str, int]) -> dict[str, int]:
    return {name: count - before[name] for name, count in _counts(proxies).items()}


def _burst(url: str, n: int = BURST) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            return list(await asyncio.gather(*(client.get(url) for _ in range(n))))

    return asyncio.run(run())


def _next_check(url: str, seen: set[str], *, timeout: float = 10.0) -> httpx.Response:
    """Probe until an answer comes from a run of the checks newer than ``seen``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(url, timeout=10)
        if response.json().get("checked_at") not in seen:
            return response
        time.sleep(0.05)
    raise AssertionError(f"no new readiness check within {timeout}s")


def _wait_status(url: str, status: int, *, timeout: float, failing: list[str] | None = None) -> tuple[dict, float]:
    """Probe until ``status`` (and, if given, exactly these checks failing): a run of the checks
    that straddles the moment a dependency goes away may still see some of it up."""
    started = time.monotonic()
    body: dict = {}
    while time.monotonic() - started < timeout:
        response = httpx.get(url, timeout=10)
        body = response.json()
        if response.status_code == status and (failing is None or sorted(body["failing"]) == failing):
            return body, time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"/readyz did not answer {status} within {timeout}s: {body}")


def test_readiness_probes_cost_one_check_over_reused_connections_and_still_see_outages(web_behind_proxies, proxies):
    url = f"{web_behind_proxies.http}/readyz"
    before = _counts(proxies)

    # when a burst of probes reaches a server that has not checked yet
    first = _burst(url)

    # then all are answered, one run of the checks served them, and each server process opened at
    # most one connection per dependency. Two processes sit behind the Procfile's HAProxy, which
    # probes both every second: gunicorn (HTTP; Redis: the channel layer's send and receive
    # connections and a cache client per thread, as Django keeps cache clients per thread) and
    # uvicorn (/ws/; the same three Redis connections).
    opened = _opened(proxies, before)
    assert [r.status_code for r in first] == [200] * BURST, first[0].json()
    assert opened["database"] <= 2 and opened["broker"] <= 2 and opened["redis"] <= 3 + 2 + WEB_THREADS, opened
    runs = {r.json().get("checked_at") for r in first}
    assert None not in runs and len(runs) <= 2, runs

    # when the result is stale, later probes run the checks again over the same connections
    again = _next_check(url, runs)
    before = _counts(proxies)
    second = _burst(url)
    assert again.status_code == 200 and [r.status_code for r in second] == [200] * BURST, again.json()
    assert _opened(proxies, before) == {"database": 0, "redis": 0, "broker": 0}

    # when the probe's idle connections die (a service restart, a proxy timeout), the next check
    # reopens them and still says ready
    seen = {r.json()["checked_at"] for r in second}
    for proxy in proxies.values():
        proxy.cut(refuse=False)
    response = _next_check(url, seen)
    assert response.status_code == 200, response.json()

    # when a dependency goes away, the cached answer hides it for at most the cache time, and its
    # return is seen as soon
    for service, parts in (("database", ["database"]), ("broker", ["broker"]), ("redis", ["channel_layer", "redis"])):
        proxies[service].cut(refuse=True)
        body, took = _wait_status(url, 503, timeout=CACHE_SECONDS + CHECK_TIMEOUT + 5, failing=parts)
        assert took < CACHE_SECONDS + CHECK_TIMEOUT + 2, (service, took)
        proxies[service].restore()
        body, _ = _wait_status(url, 200, timeout=CACHE_SECONDS + CHECK_TIMEOUT + 10)
        assert all(check["ok"] for check in body["checks"].values()), body


def _deploy_check(metrics_token: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "project.settings.prod",
        "CONTEXT_ENGINE_SKIP_DOTENV": "1",
        "SECRET_KEY": secrets.token_urlsafe(60),
        "ALLOWED_HOSTS": "example.com",
        "METRICS_TOKEN": metrics_token,
    }
    return subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "python"), "manage.py", "check", "--deploy"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_metrics_is_protected_by_default(start_web):
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    app_env = compose["x-app"]["environment"]
    assert ":?" in str(app_env.get("METRICS_TOKEN", "")), "compose refuses to start without a METRICS_TOKEN"
    for name, service in compose["services"].items():
        if service.get("command") == ["web"]:
            assert service["environment"].get("METRICS_TOKEN"), f"{name} serves /metrics without a token"

    docs = [d for p in sorted((REPO_ROOT / "docker" / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    secret = next(d for d in docs if d and d["kind"] == "Secret" and d["metadata"]["name"] == "context-engine")
    assert secret["stringData"].get("METRICS_TOKEN"), "the Kubernetes Secret sets METRICS_TOKEN"
    web = next(d for d in docs if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "context-engine-web")
    env_from = web["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert {"secretRef": {"name": "context-engine"}} in env_from

    # production settings refuse an empty or placeholder token in the deploy check
    empty = _deploy_check("")
    placeholder = _deploy_check(secret["stringData"]["METRICS_TOKEN"])
    random_token = _deploy_check(secrets.token_hex(32))
    assert empty.returncode != 0 and "METRICS_TOKEN" in empty.stdout + empty.stderr, empty.stdout + empty.stderr
    assert placeholder.returncode != 0 and "METRICS_TOKEN" in placeholder.stdout + placeholder.stderr
    assert "METRICS_TOKEN" not in random_token.stdout + random_token.stderr

    # and with a token set, /metrics answers only to its bearer
    token = secrets.token_hex(32)
    web = start_web(METRICS_TOKEN=token)
    anonymous = httpx.get(f"{web.http}/metrics", timeout=30)
    wrong = httpx.get(f"{web.http}/metrics", headers={"Authorization": "Bearer nope"}, timeout=30)
    right = httpx.get(f"{web.http}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert (anonymous.status_code, wrong.status_code) == (401, 401)
    assert "# TYPE" not in anonymous.text
    assert right.status_code == 200 and "# TYPE" in right.text


def test_a_worker_metrics_port_needs_the_bearer_token_too(settings):
    # the HTTP server a Celery worker container starts on METRICS_PORT, run here on a free port
    from apps.ops.metrics import worker_metrics_serve
    from tests.support.services import free_port, wait_for_port

    settings.METRICS_TOKEN = token = secrets.token_hex(32)
    port = free_port()
    server = worker_metrics_serve(port=port)
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/metrics"
        anonymous = httpx.get(url, timeout=10)
        wrong = httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
        right = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()

    assert (anonymous.status_code, wrong.status_code) == (401, 401)
    assert "# TYPE" not in anonymous.text
    assert right.status_code == 200 and "# TYPE" in right.text
