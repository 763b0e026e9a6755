"""The whole platform as production runs it, on private services, with every process killable.

Private PostgreSQL, Redis and RabbitMQ (tests/support/services.py) so a
scenario may restart any of them; two web instances behind the repository's
HAProxy configuration; two outbox relays, the subscribers, the dead-letter
archiver, a realtime and a batch worker, and beat, each started by its
``docker/entrypoint.sh`` role as in the images. A process a scenario kills is
started again, as the orchestrator would (``Proc.revive``).

The web instances reach Redis, and the workers reach RabbitMQ, through a
``BlackholeProxy``: a partition scenario black-holes the open connections
(new ones pass, so the platform heals by noticing and reconnecting).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.support.blackhole import BlackholeProxy
from tests.support.haproxy import HAProxy, WebInstance
from tests.support.services import PrivatePostgres, PrivateRabbitMQ, PrivateRedis

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"
DATABASE = "chaos"

# Who may do what in the workload: one owner of the sessions, one operator for canaries.
SETUP_USERS = """
from django.contrib.auth.models import Permission, User
from rest_framework.authtoken.models import Token
owner = User.objects.create_user("chaos-owner", password="chaos-owner-password")
operator = User.objects.create_user("chaos-operator", password="chaos-operator-password", is_staff=True)
operator.user_permissions.add(*Permission.objects.filter(content_type__app_label="ops"))
print(Token.objects.create(user=owner).key, Token.objects.create(user=operator).key)
"""


@dataclass
class Proc:
    """One platform process started by its entrypoint role; ``kill`` is SIGKILL, ``revive`` starts it again."""

    name: str
    role: str
    env: dict[str, str]
    ready: Callable[[Proc], bool] | None = None
    process: subprocess.Popen | None = None
    log_path: str = field(default_factory=lambda: tempfile.mktemp(prefix="ce-chaos-", suffix=".log"))
    starts: int = 0

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [str(ENTRYPOINT), self.role],
            cwd=REPO_ROOT,
            env={**self.env, "INSTANCE_NAME": self.name},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and its children (a Celery worker's pool dies with it, as in a container)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def revive(self) -> None:
        if not self.alive():
            self.start()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    def log(self, tail: int = 3000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-tail:]
        except OSError:
            return ""


@dataclass
class ChaosStack:
    pg: PrivatePostgres = field(default_factory=PrivatePostgres)
    redis: PrivateRedis = field(default_factory=PrivateRedis)
    rabbit: PrivateRabbitMQ = field(default_factory=PrivateRabbitMQ)
    procs: dict[str, Proc] = field(default_factory=dict)
    webs: list[WebInstance] = field(default_factory=list)
    haproxy: HAProxy | None = None
    redis_proxy: BlackholeProxy | None = None
    rabbit_proxy: BlackholeProxy | None = None
    owner_token: str = ""
    operator_token: str = ""

    # --- addresses ------------------------------------------------------------
    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg.port}/{DATABASE}"

    @property
    def broker_url(self) -> str:
        return self.rabbit.url

    @property
    def url(self) -> str:
        assert self.haproxy is not None
        return self.haproxy.url

    def sql(self, query: str, params: tuple | list = ()) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def env(self, *, redis_port: int | None = None, rabbit_port: int | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PROMETHEUS"))}
        redis = f"redis://127.0.0.1:{redis_port or self.redis.port}/0"
        broker = f"amqp://guest:guest@127.0.0.1:{rabbit_port or self.rabbit.port}//"
        env.update(
            PATH=f"{REPO_ROOT / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            DJANGO_SETTINGS_MODULE="project.settings.test",
            TEST_RUN_ID=f"chaos{self.pg.port}",
            CONTEXT_ENGINE_SKIP_DOTENV="1",
            PYTHONPATH=str(REPO_ROOT),
            PYTHONUNBUFFERED="1",
            DATABASE_URL=f"postgres://postgres@127.0.0.1:{self.pg.port}/{DATABASE}",
            DB_CONN_MAX_AGE="0",
            REDIS_URL=redis,
            TEST_BROKER_URL=broker,
            BROKER_URL=broker,
            LOG_LEVEL="WARNING",
            AI_WARM_ON_START="false",
            REALTIME_CONCURRENCY="2",
            BATCH_CONCURRENCY="2",
            GRACEFUL_SHUTDOWN_SECONDS="5",
        )
        return env

    # --- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            for future in [pool.submit(s.start) for s in (self.pg, self.redis, self.rabbit)]:
                future.result()
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "createdb", "-h", "127.0.0.1", "-p", str(self.pg.port), DATABASE],
            check=True,
        )
        self.redis_proxy = BlackholeProxy(upstream_port=self.redis.port)
        self.rabbit_proxy = BlackholeProxy(upstream_port=self.rabbit.port)
        self.redis_proxy.start()
        self.rabbit_proxy.start()
        base = self.env()
        self._manage(base, "migrate", "--noinput")
        tokens = self._manage(base, "shell", "-c", SETUP_USERS).split()
        self.owner_token, self.operator_token = tokens[-2], tokens[-1]
        web_env = self.env(redis_port=self.redis_proxy.port)
        self.webs = [WebInstance(name="web1", env=web_env), WebInstance(name="web2", env=web_env)]
        worker_env = self.env(rabbit_port=self.rabbit_proxy.port)
        for name, role, env in (
            ("relay1", "relay", base),
            ("relay2", "relay", base),
            ("subscribers", "subscribers", base),
            ("archiver", "archiver", base),
            ("worker-realtime", "worker-realtime", worker_env),
            ("worker-batch", "worker-batch", worker_env),
            ("beat", "beat", base),
        ):
            self.procs[name] = Proc(name=name, role=role, env=env)
        for web in self.webs:
            web.start(timeout=120)
        for proc in self.procs.values():
            proc.start()
        self.haproxy = HAProxy(backends=self.webs)
        self.haproxy.start()
        self.haproxy.wait_status("web1", "UP", timeout=60)
        self.haproxy.wait_status("web2", "UP", timeout=60)
        self.wait_workers_ready()
        self.started_in = time.monotonic() - t0

    def _manage(self, env: dict[str, str], *args: str) -> str:
        done = subprocess.run(
            [str(REPO_ROOT / ".venv" / "bin" / "python"), "manage.py", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args[:1])} failed: {done.stderr[-3000:]}")
        return done.stdout

    def consumers(self) -> dict[str, int]:
        """Consumers per queue on the private node (``rabbitmqctl``: what is attached right now)."""
        rows = self.rabbitmqctl("list_queues", "name", "consumers", "messages_unacknowledged", "messages_ready")
        return {row[0]: int(row[1]) for row in rows}

    def queue_figures(self) -> dict[str, tuple[int, int]]:
        """``{queue: (unacknowledged, ready)}`` on the private node."""
        rows = self.rabbitmqctl("list_queues", "name", "messages_unacknowledged", "messages_ready")
        return {row[0]: (int(row[1]), int(row[2])) for row in rows}

    def rabbitmqctl(self, *args: str) -> list[list[str]]:
        done = subprocess.run(
            ["rabbitmqctl", "-n", self.rabbit.nodename, "-q", "--no-table-headers", *args],
            env=self.rabbit._env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return [line.split("\t") for line in done.stdout.splitlines() if line.strip()]

    def wait_workers_ready(self, *, timeout: float = 180.0) -> None:
        """Every consumer attached: both worker queues, the subscriber queues and the dead-letter queues."""
        wanted = ("ai.realtime", "ai.batch", "maintenance", "events.activity")
        deadline = time.monotonic() + timeout
        consumers: dict[str, int] = {}
        while time.monotonic() < deadline:
            consumers = self.consumers()
            if all(consumers.get(q, 0) > 0 for q in wanted):
                return
            time.sleep(1.0)
        raise TimeoutError(f"consumers missing after {timeout}s: {consumers}\n" + self.logs())

    def revive_all(self) -> None:
        for web in self.webs:
            if web.process is None or web.process.poll() is not None:
                web.start(timeout=120)
        for proc in self.procs.values():
            proc.revive()

    def logs(self, tail: int = 3000) -> str:
        parts = [f"--- {name}\n{proc.log(tail)}" for name, proc in self.procs.items()]
        parts += [f"--- {web.name}\n{web.log()[-tail:]}" for web in self.webs]
        return "\n".join(parts)

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.stop()
        for proc in self.procs.values():
            proc.stop()
        for web in self.webs:
            web.stop(timeout=10)
        for proxy in (self.redis_proxy, self.rabbit_proxy):
            if proxy is not None:
                proxy.stop()
        for service in (self.rabbit, self.redis, self.pg):
            service.cleanup()
