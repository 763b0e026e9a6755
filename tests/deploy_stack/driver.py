"""``make test-deploy``: build both images, run the compose stack in containers, smoke-test it through HAProxy.

Steps (each timed; the whole run must stay under ``DEPLOY_BUDGET_S``, 25 minutes):

1. Docker: starts ``dockerd`` when ``docker info`` fails (``apt-get install docker.io`` first
   when there is none), and finds a client that builds with BuildKit and a compose command
   (``docker compose``, else the ``docker-compose`` v1 package with a copy of the compose file
   without the top-level ``name`` it does not know).
2. Base image: ``python:3.11-slim-bookworm`` when it can be pulled, else a local Debian bookworm
   image (``tests/deploy_stack/build_base.sh``: debootstrap + ``docker import``, reused when present).
3. Images: ``context-engine`` (target web) and ``context-engine-worker`` (target worker) with
   ``docker build --network host``; this machine's CA bundle is a build secret (never in a layer);
   a torch wheel found on this machine whose sha256 the lock lists is served to the build on
   loopback (``TORCH_FIND_LINKS``), else torch comes from the PyTorch CPU index.
4. Stack: ``docker-compose.yml`` with free host ports, and ``docker/compose.local-images.yml``
   (PostgreSQL, Redis, RabbitMQ, HAProxy from Debian packages) when the official images cannot be
   pulled; waits until every container is healthy and ``migrate`` exited 0.
5. Smoke test through HAProxy: the admin login page and every asset it references, ``/api/docs/``
   and every asset it references, a session over REST with its event on a WebSocket and a
   suggestion frame from the realtime worker, a canary ``fail`` landing as a dead letter, a CORS
   preflight from an allowed origin, ``/readyz`` with a pod-IP ``Host``.
6. ``restart web1`` under load: 0 failed requests.
7. Tears the stack down (volumes too) and writes ``bench/results/deploy.md``.

Environment: DEPLOY_KEEP=1 leaves the stack up; DEPLOY_REBUILD_BASE=1 rebuilds the local base image;
DEPLOY_LOCAL_IMAGES=1/0 forces or refuses the Debian-built service images; TORCH_WHEEL=path.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from websockets.sync.client import connect as ws_connect

REPO = Path(__file__).resolve().parents[2]
PROJECT = os.environ.get("DEPLOY_PROJECT", "context-engine-deploy")
BUDGET_S = float(os.environ.get("DEPLOY_BUDGET_S", str(25 * 60)))
OFFICIAL_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "context-engine/base:bookworm-py311"
WEB_IMAGE = "context-engine:latest"
WORKER_IMAGE = "context-engine-worker:latest"
SERVICE_IMAGES = {"postgres": "postgres:16-bookworm", "redis": "redis:7-bookworm"}
LOCAL_SERVICES = ("postgres", "redis", "rabbitmq", "haproxy")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
RESULTS = REPO / "bench" / "results" / "deploy.md"
WORK = REPO / "run" / "deploy"

T0 = time.monotonic()
TIMINGS: dict[str, float] = {}


def log(message: str) -> None:
    print(f"[test-deploy {time.monotonic() - T0:7.1f}s] {message}", flush=True)


def run(cmd: list[str], *, check: bool = True, capture: bool = False, timeout: float | None = None, **kw: Any):
    result = subprocess.run(cmd, check=False, text=True, capture_output=capture, timeout=timeout, **kw)
    if check and result.returncode != 0:
        detail = (result.stdout or "") + (result.stderr or "") if capture else ""
        raise SystemExit(f"command failed ({result.returncode}): {' '.join(cmd)}\n{detail[-4000:]}")
    return result


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    log(f"== {name}")
    start = time.monotonic()
    yield
    TIMINGS[name] = time.monotonic() - start
    log(f"   {name}: {TIMINGS[name]:.1f}s")


# --- 1. Docker ----------------------------------------------------------------------------


def docker_ok() -> bool:
    return shutil.which("docker") is not None and run(["docker", "info"], check=False, capture=True).returncode == 0


def ensure_docker() -> None:
    if docker_ok():
        return
    if shutil.which("dockerd") is None:
        log("installing docker.io (apt-get)")
        run(["apt-get", "install", "-y", "-qq", "docker.io"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    log("starting dockerd (log: /var/log/dockerd.log)")
    with open("/var/log/dockerd.log", "ab") as out:
        subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while not docker_ok():
        if time.monotonic() > deadline:
            raise SystemExit("dockerd did not answer `docker info` in 90 s: see /var/log/dockerd.log")
        time.sleep(1)


@functools.cache
def docker_build_cmd() -> tuple[list[str], dict[str, str]]:
    """A client that builds with BuildKit: buildx when present, else a pre-23 client's built-in one."""
    if run(["docker", "buildx", "version"], check=False, capture=True).returncode == 0:
        return ["docker", "build"], {}
    for client in ("docker", "/usr/bin/docker", "/usr/local/bin/docker"):
        path = shutil.which(client)
        if not path:
            continue
        version = run([path, "version", "--format", "{{.Client.Version}}"], check=False, capture=True).stdout
        major = re.match(r"(\d+)", version.strip())
        if major and int(major.group(1)) < 23:
            return [path, "build"], {"DOCKER_BUILDKIT": "1"}
    raise SystemExit("no docker client builds with BuildKit here: install docker-buildx, or docker.io's client")


@functools.cache
def compose_cmd() -> tuple[list[str], bool]:
    """The compose command and whether it is v1 (no top-level ``name``)."""
    if run(["docker", "compose", "version"], check=False, capture=True).returncode == 0:
        return ["docker", "compose"], False
    if shutil.which("docker-compose") is None:
        log("installing docker-compose (apt-get)")
        run(
            ["apt-get", "install", "-y", "-qq", "docker-compose"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    return ["docker-compose"], True


def can_pull(image: str) -> bool:
    if run(["docker", "image", "inspect", image], check=False, capture=True).returncode == 0:
        return True
    return run(["docker", "pull", "-q", image], check=False, capture=True, timeout=300).returncode == 0


# --- 2.-3. images -------------------------------------------------------------------------


def base_image() -> str:
    if os.environ.get("DEPLOY_LOCAL_IMAGES") != "1" and can_pull(OFFICIAL_BASE):
        return OFFICIAL_BASE
    exists = run(["docker", "image", "inspect", LOCAL_BASE], check=False, capture=True).returncode == 0
    if exists and os.environ.get("DEPLOY_REBUILD_BASE") != "1":
        log(f"{OFFICIAL_BASE} cannot be pulled; reusing {LOCAL_BASE}")
        return LOCAL_BASE
    if shutil.which("debootstrap") is None:
        run(["apt-get", "install", "-y", "-qq", "debootstrap"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    log(f"{OFFICIAL_BASE} cannot be pulled; building {LOCAL_BASE} with debootstrap")
    run(["nice", "-n", "10", str(REPO / "tests" / "deploy_stack" / "build_base.sh"), LOCAL_BASE])
    return LOCAL_BASE


def torch_wheel() -> Path | None:
    """A torch wheel on this machine whose sha256 is one ai.lock lists for torch, or None."""
    lock = (REPO / "requirements" / "ai.lock").read_text()
    entry = re.search(r"^torch==(\S+)((?: \\\n\s+--hash=sha256:\w+)+)", lock, re.M)
    if not entry:
        raise SystemExit("requirements/ai.lock has no torch entry")
    version, hashes = entry.group(1), set(re.findall(r"sha256:(\w+)", entry.group(2)))
    candidates = [Path(os.environ["TORCH_WHEEL"])] if os.environ.get("TORCH_WHEEL") else []
    for folder in ("/opt/wheels", Path.home() / ".cache" / "pip" / "wheels", "/tmp/w"):
        candidates += sorted(Path(folder).glob(f"torch-{version}-cp311-*.whl")) if Path(folder).is_dir() else []
    for wheel in candidates:
        if wheel.is_file() and hashlib.sha256(wheel.read_bytes()).hexdigest() in hashes:
            return wheel
    return None


@contextlib.contextmanager
def serve_dir(folder: Path) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def build_app_images(base: str) -> None:
    cmd, env = docker_build_cmd()
    common = ["--network", "host", "-f", "docker/Dockerfile", "--build-arg", f"BASE_IMAGE={base}"]
    if CA_BUNDLE.is_file():
        common += ["--secret", f"id=ca_bundle,src={CA_BUNDLE}"]
    wheel = torch_wheel()
    with contextlib.ExitStack() as stack:
        worker_args: list[str] = []
        if wheel is not None:
            WORK.mkdir(parents=True, exist_ok=True)
            folder = WORK / "torch-wheel"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            (folder / wheel.name).symlink_to(wheel)
            url = stack.enter_context(serve_dir(folder))
            worker_args = ["--build-arg", f"TORCH_FIND_LINKS={url}"]
            log(f"torch from this machine's wheel {wheel} (hash-checked by the lock)")
        for target, tag, extra in (("web", WEB_IMAGE, []), ("worker", WORKER_IMAGE, worker_args)):
            with step(f"build {target} image"):
                run(
                    [
                        "nice",
                        "-n",
                        "10",
                        *cmd,
                        "--progress",
                        "plain",
                        *common,
                        *extra,
                        "--target",
                        target,
                        "-t",
                        tag,
                        ".",
                    ],
                    cwd=REPO,
                    env={**os.environ, **env},
                    capture=True,
                )


def build_service_images(base: str) -> None:
    cmd, env = docker_build_cmd()
    folder = REPO / "tests" / "deploy_stack" / "images"
    for service in LOCAL_SERVICES:
        run(
            ["nice", "-n", "10", *cmd, "-q", "--network", "host", "--build-arg", f"BASE_IMAGE={base}"]
            + ["-f", str(folder / f"{service}.Dockerfile"), "-t", f"context-engine/{service}:local", str(folder)],
            env={**os.environ, **env},
            capture=True,
        )


def image_size(image: str) -> int:
    return int(run(["docker", "image", "inspect", "-f", "{{.Size}}", image], capture=True).stdout.strip())


# --- 4. the stack -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, local_images: bool) -> None:
        self.cmd, v1 = compose_cmd()
        files = [REPO / "docker-compose.yml"]
        if v1:
            WORK.mkdir(parents=True, exist_ok=True)
            doc = yaml.safe_load(files[0].read_text())
            doc.pop("name", None)
            files = [WORK / "docker-compose.v1.yml"]
            files[0].write_text(yaml.safe_dump(doc, sort_keys=False))
        if local_images:
            files.append(REPO / "docker" / "compose.local-images.yml")
        self.args = ["-p", PROJECT, "--project-directory", str(REPO)]
        for f in files:
            self.args += ["-f", str(f)]
        self.ports = {
            name: free_port()
            for name in (
                "HTTP_HOST_PORT",
                "STATS_HOST_PORT",
                "POSTGRES_HOST_PORT",
                "REDIS_HOST_PORT",
                "AMQP_HOST_PORT",
                "RABBITMQ_UI_HOST_PORT",
            )
        }
        http_port = self.ports["HTTP_HOST_PORT"]
        self.origin = f"http://localhost:{http_port}"
        self.base = f"http://127.0.0.1:{http_port}"
        self.env = {
            **os.environ,
            **{k: str(v) for k, v in self.ports.items()},
            "ALLOWED_ORIGINS": f"{self.origin},http://127.0.0.1:{http_port}",
            "CSRF_TRUSTED_ORIGINS": f"{self.origin},http://127.0.0.1:{http_port}",
            "METRICS_TOKEN": secrets.token_hex(32),
            "SECRET_KEY": secrets.token_urlsafe(64),
            "WEB_IMAGE": WEB_IMAGE,
            "WORKER_IMAGE": WORKER_IMAGE,
        }

    def compose(self, *args: str, check: bool = True, capture: bool = False, timeout: float | None = None):
        return run(
            [*self.cmd, *self.args, *args], env=self.env, cwd=REPO, check=check, capture=capture, timeout=timeout
        )

    def containers(self) -> dict[str, dict[str, Any]]:
        ids = self.compose("ps", "-q", "-a", capture=True, check=False).stdout.split()
        if not ids:
            ids = self.compose("ps", "-q", capture=True).stdout.split()
        if not ids:
            return {}
        data = json.loads(run(["docker", "inspect", *ids], capture=True).stdout)
        return {d["Config"]["Labels"]["com.docker.compose.service"]: d for d in data}

    def wait_healthy(self, timeout: float) -> dict[str, float]:
        """Until every container is healthy (or, without a health check, running) and migrate exited 0.

        Returns each service's seconds from its container start to its first healthy report."""
        deadline = time.monotonic() + timeout
        healthy_after: dict[str, float] = {}
        while True:
            pending = []
            for service, c in self.containers().items():
                state = c["State"]
                if service == "migrate":
                    if state["Status"] == "exited" and state["ExitCode"] != 0:
                        raise SystemExit("migrate failed:\n" + self.logs("migrate"))
                    if state["Status"] != "exited":
                        pending.append(service)
                    continue
                health = (state.get("Health") or {}).get("Status")
                if state["Status"] in ("exited", "dead") or state.get("Restarting"):
                    pending.append(f"{service}({state['Status']}, restarts {c.get('RestartCount', 0)})")
                elif health not in (None, "healthy"):
                    pending.append(f"{service}({health})")
                elif service not in healthy_after:
                    healthy_after[service] = _since(state["StartedAt"])
            if not pending:
                return healthy_after
            if time.monotonic() > deadline:
                names = [p.split("(")[0] for p in pending]
                raise SystemExit(f"not healthy after {timeout:.0f}s: {pending}\n" + self.logs(*names))
            time.sleep(1)

    def logs(self, *services: str, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), *services, check=False, capture=True).stdout


def _since(started_at: str) -> float:
    """Seconds since a Docker timestamp (nanoseconds, Z)."""
    from datetime import UTC, datetime

    stamp = re.sub(r"(\.\d{6})\d*", r"\1", started_at).replace("Z", "+00:00")
    return (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()


# --- 5. the smoke test --------------------------------------------------------------------


def assets_of(html: str) -> list[str]:
    refs = re.findall(r"""(?:href|src)\s*=\s*["']([^"']+)["']""", html)
    return sorted({r for r in refs if r.startswith("/static/") or r.startswith("static/")})


def check_page_and_assets(client: httpx.Client, path: str, *, min_assets: int) -> int:
    page = client.get(path, follow_redirects=True)
    assert page.status_code == 200, f"{path}: {page.status_code}"
    assets = assets_of(page.text)
    assert len(assets) >= min_assets, f"{path}: only {assets} referenced"
    for asset in assets:
        url = urllib.parse.urljoin(str(page.url), asset)
        answer = client.get(url)
        assert answer.status_code == 200, f"{path}: asset {asset} -> {answer.status_code}"
        assert answer.content, f"{path}: asset {asset} is empty"
    return len(assets)


def smoke(stack: Stack) -> dict[str, Any]:
    found: dict[str, Any] = {}
    token = stack.compose(
        "exec", "-T", "web1", "python", "manage.py", "create_api_token", "smoke", "--staff", capture=True
    )
    token = token.stdout.strip().splitlines()[-1]
    auth = {"Authorization": f"Token {token}"}
    with httpx.Client(base_url=stack.base, timeout=20) as client:
        found["admin assets"] = check_page_and_assets(client, "/admin/", min_assets=2)
        found["docs assets"] = check_page_and_assets(client, "/api/docs/", min_assets=2)
        schema = client.get("/api/schema/", headers=auth)
        assert schema.status_code == 200, schema.status_code

        # a session over REST, its events live on a WebSocket, a suggestion from the realtime worker
        session = client.post("/api/v1/sessions/", json={"title": "Deploy smoke"}, headers=auth)
        assert session.status_code == 201, session.text
        sid = session.json()["id"]
        ws_url = stack.base.replace("http://", "ws://") + f"/ws/sessions/{sid}/"
        with ws_connect(ws_url, additional_headers=auth, origin=stack.origin, open_timeout=15) as ws:
            hello = json.loads(ws.recv(timeout=15))
            assert hello["type"] == "hello", hello
            texts = [
                "We need to migrate the billing database from MySQL to PostgreSQL before the end of the quarter.",
                "Alice will book the venue for the offsite team dinner next Friday.",
                "Remember to rotate the API keys for the payment provider.",
                "What is the plan for moving our invoices data into Postgres?",
            ]
            seqs = []
            for text in texts:
                appended = client.post(
                    f"/api/v1/sessions/{sid}/events/",
                    json={"event_type": "context_update", "data": {"text": text}},
                    headers={**auth, "Idempotency-Key": secrets.token_hex(8)},
                )
                assert appended.status_code == 201, appended.text
                seqs.append(appended.json()["seq"])
            events, suggestion = set(), None
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and (suggestion is None or events != set(seqs)):
                try:
                    frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                except TimeoutError:
                    break
                if frame.get("type") == "event":
                    events.add(frame["seq"])
                elif frame.get("type") == "suggestion":
                    suggestion = frame
            assert events == set(seqs), f"event frames {sorted(events)}, appended {seqs}"
            assert suggestion is not None, "no suggestion frame in 180 s:\n" + stack.logs(
                "worker-realtime", "subscribers", "relay"
            )
            found["suggestion"] = suggestion.get("kind") or suggestion.get("type")
        snapshot = client.get(f"/api/v1/sessions/{sid}/context/", headers=auth)
        assert snapshot.status_code == 200, snapshot.text

        # a canary that fails lands as a dead letter (worker-batch -> DLQ -> archiver -> row)
        canary = client.post("/api/v1/ops/canary/", json={"mode": "fail"}, headers=auth)
        assert canary.status_code == 201, canary.text
        cid = canary.json()["id"]
        deadline, body = time.monotonic() + 120, {}
        while time.monotonic() < deadline:
            body = client.get(f"/api/v1/ops/canary/{cid}/", headers=auth).json()
            if body.get("dead_letter"):
                break
            time.sleep(1)
        assert body.get("dead_letter"), f"canary never dead-lettered: {body}\n" + stack.logs("worker-batch", "archiver")
        found["canary"] = body["status"]

        # CORS preflight from an allowed origin
        preflight = client.options(
            "/api/v1/sessions/",
            headers={
                "Origin": stack.origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
            },
        )
        assert preflight.status_code == 200, preflight.status_code
        assert preflight.headers.get("access-control-allow-origin") == stack.origin, preflight.headers
        allowed = preflight.headers.get("access-control-allow-headers", "").lower()
        assert "idempotency-key" in allowed and "authorization" in allowed, allowed

        # a Kubernetes probe: Host is the pod IP
        ready = client.get("/readyz", headers={"Host": "10.244.1.17:8000"})
        assert ready.status_code == 200, (ready.status_code, ready.text)
        other = client.get("/api/v1/sessions/", headers={**auth, "Host": "10.244.1.17:8000"})
        assert other.status_code == 400, "only probes answer any Host"
    found["token"] = token
    found["session"] = sid
    return found


# --- 6. a rolling restart under load ------------------------------------------------------


def restart_under_load(
    stack: Stack, token: str, session_id: str, *, workers: int = 8, per_worker_rps: float = 6.0
) -> dict[str, Any]:
    """Snapshot reads from one user through HAProxy while web1 restarts; paced below the user's
    throttle (THROTTLE_USER_RATE, 6000/min: 8 x 6/s is 2,880/min), so any failure is the restart's."""
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(base_url=stack.base, timeout=15, headers={"Authorization": f"Token {token}"}) as client:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    status = client.get(f"/api/v1/sessions/{session_id}/context/").status_code
                    error = None if status == 200 else f"HTTP {status}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                with lock:
                    if error is None:
                        counts["ok"] += 1
                    else:
                        counts["failed"] += 1
                        failures.append(error)
                stop.wait(max(0.0, 1 / per_worker_rps - (time.monotonic() - began)))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    time.sleep(3)
    started = time.monotonic()
    stack.compose("restart", "web1")
    # until HAProxy has it back: web1 healthy, then a few seconds of traffic on both
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = stack.containers()["web1"]["State"]
        if (state.get("Health") or {}).get("Status") == "healthy":
            break
        time.sleep(0.5)
    back_after = time.monotonic() - started
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert counts["ok"] > 200, counts
    kinds = collections.Counter(failures).most_common(5)
    assert counts["failed"] == 0, f"{counts['failed']} failed requests during the restart ({counts['ok']} ok): {kinds}"
    return {**counts, "web1 back after s": round(back_after, 1)}


# --- start times --------------------------------------------------------------------------


def cold_starts(images: dict[str, str], rounds: int = 5) -> dict[str, float]:
    """Best seconds, over interleaved rounds on an idle host, for `docker run` of each image to
    import the web role's application (project.wsgi) and exit."""
    env = ["-e", "SECRET_KEY=" + secrets.token_urlsafe(64), "-e", "ALLOWED_HOSTS=localhost", "-e", "METRICS_TOKEN=x"]
    script = "mkdir -p $PROMETHEUS_MULTIPROC_DIR && exec python -c 'import project.wsgi'"
    best = dict.fromkeys(images, float("inf"))
    for _ in range(rounds):
        for name, image in images.items():
            start = time.monotonic()
            run(["docker", "run", "--rm", "--entrypoint", "sh", *env, image, "-c", script], capture=True)
            best[name] = min(best[name], time.monotonic() - start)
    return best


def write_results(data: dict[str, Any]) -> None:
    mb = 1000 * 1000
    sizes, cold, healthy = data["sizes"], data["cold"], data["healthy_after"]
    lines = [
        "# Deployment: image sizes and container start times",
        "",
        f"`make test-deploy` (tests/deploy_stack/driver.py), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},",
        "on this "
        f"machine (2 cores): base image `{data['base']}`, service images "
        + ("built from Debian packages (docker/compose.local-images.yml)" if data["local_images"] else "official")
        + f", torch {'from the wheel on this machine' if data['torch_local'] else 'from the PyTorch CPU index'}.",
        "Before this split every process ran one image with torch, transformers, scipy and scikit-learn;",
        "the worker image is that single image (every package, every role), so it stands for it below.",
        "",
        "| image | target | size | `docker run` to `import project.wsgi` (best of 5, idle host) |",
        "|---|---|---|---|",
        f"| `{WEB_IMAGE}` | web (no torch) | {sizes['web'] / mb:,.0f} MB | {cold['web']:.2f} s |",
        f"| `{WORKER_IMAGE}` (= the single image) | worker (torch CPU) | {sizes['worker'] / mb:,.0f} MB | "
        f"{cold['worker']:.2f} s |",
        f"| base `{data['base']}` | | {sizes['base'] / mb:,.0f} MB | |",
        "",
        f"The web image is {sizes['worker'] / sizes['web']:.1f}x smaller: "
        f"{(sizes['worker'] - sizes['web']) / mb:,.0f} MB less to pull per web, relay, beat or migrate node.",
        "A process starts as fast from either (the web role imports no torch in both: the same code);",
        "what the split saves is the pull, the disk and the attack surface of every non-AI node.",
        "",
        "Container start to first healthy report in the stack (Docker health checks every 15 s after a",
        "start period, so these are upper bounds at the probe's granularity; migrate runs first):",
        "",
        "| service | image | start to healthy |",
        "|---|---|---|",
    ]
    for service in sorted(healthy):
        image = "worker" if service.startswith("worker-") else ("web" if service in data["app_services"] else "service")
        lines.append(f"| {service} | {image} | {healthy[service]:.1f} s |")
    lines += [
        "",
        f"Rolling restart of web1 under load ({data['restart']['ok']} requests through HAProxy, "
        f"{data['restart']['failed']} failed; web1 healthy again after {data['restart']['web1 back after s']} s).",
        "",
        "Steps of the run:",
        "",
        "| step | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in TIMINGS.items()]
    lines.append(f"| total | {time.monotonic() - T0:.0f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    log(f"wrote {RESULTS.relative_to(REPO)}")


def main() -> int:
    with step("docker"):
        ensure_docker()
        docker_build_cmd()
        compose_cmd()
    with step("base image"):
        base = base_image()
    local_images = {"1": True, "0": False}.get(
        os.environ.get("DEPLOY_LOCAL_IMAGES", ""), not all(can_pull(i) for i in SERVICE_IMAGES.values())
    )
    if local_images:
        with step("service images from Debian packages"):
            build_service_images(base)
    build_app_images(base)
    stack = Stack(local_images)
    data: dict[str, Any] = {"base": base, "local_images": local_images, "torch_local": torch_wheel() is not None}
    stack.compose("down", "-v", "--remove-orphans", check=False, capture=True)
    try:
        with step("compose up"):
            stack.compose("up", "-d", "--no-build", capture=True)
        with step("wait for health"):
            data["healthy_after"] = stack.wait_healthy(timeout=420)
        with step("smoke test through HAProxy"):
            found = smoke(stack)
            log(f"   smoke: { ({k: v for k, v in found.items() if k != 'token'}) }")
        with step("restart web1 under load"):
            data["restart"] = restart_under_load(stack, found["token"], found["session"])
            log(f"   restart: {data['restart']}")
        data["sizes"] = {"web": image_size(WEB_IMAGE), "worker": image_size(WORKER_IMAGE), "base": image_size(base)}
        data["app_services"] = {
            s for s, c in stack.containers().items() if c["Config"]["Image"] in (WEB_IMAGE, WORKER_IMAGE)
        }
    except (AssertionError, SystemExit) as exc:
        log(f"FAILED: {exc}")
        if os.environ.get("DEPLOY_KEEP") != "1":
            stack.compose("down", "-v", "--remove-orphans", check=False, capture=True)
        return 1
    if os.environ.get("DEPLOY_KEEP") != "1":
        with step("tear down"):
            stack.compose("down", "-v", "--remove-orphans", capture=True)
    with step("start times"):
        data["cold"] = cold_starts({"web": WEB_IMAGE, "worker": WORKER_IMAGE})
    write_results(data)
    total = time.monotonic() - T0
    if total > BUDGET_S:
        log(f"FAILED: took {total:.0f}s, over the {BUDGET_S:.0f}s budget")
        return 1
    log(f"passed in {total:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
