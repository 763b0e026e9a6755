"""Private instances of Redis, RabbitMQ and PostgreSQL on free ports.

Fault tests (stop, kill, restart a service) use these, never the shared ones.
Each instance lives in a temporary directory and is stopped at teardown.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, *, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class PrivateRedis:
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ce-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, *, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class PrivateRabbitMQ:
    """A RabbitMQ node of its own (about 8 s to accept connections)."""

    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ce-rabbit-"))
    # Hooks for a cluster of private nodes (tests/support/rabbit_cluster.py); empty: a plain node.
    # Lines appended to rabbitmq.conf.
    extra_config: str = ""
    # RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS (e.g. fewer schedulers for a small node).
    erl_args: str = ""

    def __post_init__(self) -> None:
        self.nodename = f"ce{self.port}@localhost"
        shutil.chown(self.workdir, user="rabbitmq", group="rabbitmq")
        os.chmod(self.workdir, 0o755)  # noqa: S103 - the rabbitmq user must enter it

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        base = Path(self.workdir)
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(base / "feature_flags"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(base / "rabbit.pid"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
        )
        if self.erl_args:
            env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = self.erl_args
        return env

    @property
    def pid_file(self) -> Path:
        """Where the node writes its Erlang VM's pid (RABBITMQ_PID_FILE)."""
        return Path(self.workdir) / "rabbit.pid"

    def start(self, *, timeout: float = 60.0) -> None:
        base = Path(self.workdir)
        (base / "enabled_plugins").write_text("[].\n")
        # Keep the node small and quiet; no management plugin needed.
        (base / "rabbitmq.conf").write_text("loopback_users = none\n" + self.extra_config)
        for path in base.iterdir():
            shutil.chown(path, user="rabbitmq", group="rabbitmq")
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self._env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, timeout=timeout)
        # The port opens a moment before the node accepts AMQP sessions.
        subprocess.run(
            ["rabbitmqctl", "-n", self.nodename, "await_startup", "--timeout", str(int(timeout))],
            env=self._env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.nodename, "stop"],
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def restart(self, *, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class PrivatePostgres:
    port: int = field(default_factory=free_port)
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ce-pg-"))

    @property
    def bindir(self) -> Path:
        versions = sorted(Path("/usr/lib/postgresql").iterdir())
        return versions[-1] / "bin"

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as_postgres(self, args: list[str]) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def start(self) -> None:
        data = Path(self.workdir) / "data"
        shutil.chown(self.workdir, user="postgres", group="postgres")
        if not data.exists():
            self._run_as_postgres([str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"])
        self._run_as_postgres(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(Path(self.workdir) / "log"),
                "-o",
                f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1",
                "-w",
                "start",
            ]
        )

    def stop(self) -> None:
        data = Path(self.workdir) / "data"
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.bindir / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def restart(self, *, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
