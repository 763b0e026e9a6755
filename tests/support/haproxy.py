"""Real web instances (uvicorn) behind a real HAProxy (Debian package) on loopback free ports.

Used by tests/integration/ops/test_lb*.py and bench/lb.py. HAProxy runs the
repository's own docker/haproxy.cfg, with addresses given through its
environment variables.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.services import free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
HAPROXY_CFG = REPO_ROOT / "docker" / "haproxy.cfg"


@dataclass
class WebInstance:
    """One ``uvicorn project.asgi:application`` process, restartable on the same port."""

    name: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    graceful_seconds: int = 10
    process: subprocess.Popen | None = None
    log_path: str = ""

    def start(self, *, timeout: float = 60.0) -> None:
        env = {**self.env, "INSTANCE_NAME": self.name}
        if not self.log_path:
            self.log_path = tempfile.mktemp(prefix=f"ce-{self.name}-", suffix=".log")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [
                str(REPO_ROOT / ".venv" / "bin" / "uvicorn"),
                "project.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--ws",
                "websockets",
                "--timeout-graceful-shutdown",
                str(self.graceful_seconds),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for_port(self.port, timeout=timeout)

    def stop(self, *, timeout: float = 30.0) -> None:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL if it overstays."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@dataclass
class HAProxy:
    backends: list[WebInstance]
    port: int = field(default_factory=free_port)
    stats_port: int = field(default_factory=free_port)
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ce-haproxy-"))
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> str:
        return str(Path(self.workdir) / "admin.sock")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HAPROXY_BIND=f"127.0.0.1:{self.port}",
            HAPROXY_STATS_BIND=f"127.0.0.1:{self.stats_port}",
            HAPROXY_SOCKET=self.socket_path,
            WEB1_ADDR=f"127.0.0.1:{self.backends[0].port}",
            WEB2_ADDR=f"127.0.0.1:{self.backends[1].port}",
            # uvicorn serves HTTP and WebSockets alike: the same instances back both.
            WS1_ADDR=f"127.0.0.1:{self.backends[0].port}",
            WS2_ADDR=f"127.0.0.1:{self.backends[1].port}",
        )
        return env

    def start(self) -> None:
        # -W: master-worker, so a reload (SIGUSR2) starts a new worker and the old one drains.
        self.process = subprocess.Popen(
            ["haproxy", "-W", "-db", "-f", str(HAPROXY_CFG)],
            env=self._env(),
            stdout=open(Path(self.workdir) / "haproxy.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, timeout=10)

    def command(self, line: str) -> str:
        """One command on the admin socket (``show stat``, ``set server web/web1 state drain``)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(self.socket_path)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode()

    def server_status(self) -> dict[str, str]:
        """``{"web1": "UP", "web2": "DOWN", ...}`` from ``show stat``."""
        text = self.command("show stat")
        header = text.splitlines()[0].lstrip("# ").split(",")
        status: dict[str, str] = {}
        for line in text.splitlines()[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "web" and row.get("svname") not in ("FRONTEND", "BACKEND"):
                status[row["svname"]] = row.get("status", "")
        return status

    def server_sessions(self) -> dict[str, int]:
        """Open connections per instance (``scur``), e.g. WebSockets held by each: HTTP goes through
        the ``web`` backend, ``/ws/`` through ``ws``, whose server N is the same instance as webN."""
        text = self.command("show stat")
        header = text.splitlines()[0].lstrip("# ").split(",")
        sessions: dict[str, int] = {}
        for line in text.splitlines()[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") in ("web", "ws") and row.get("svname") not in ("FRONTEND", "BACKEND"):
                name = "web" + row["svname"][2:] if row["pxname"] == "ws" else row["svname"]
                sessions[name] = sessions.get(name, 0) + int(row.get("scur") or 0)
        return sessions

    def wait_settled(self, *, timeout: float = 30.0, slowstart: float = 5.0) -> None:
        """Every active server UP and past ``slowstart`` since its last state change:
        a server back from a restart ramps its weight up over 5 s, and until then
        roundrobin favours the others (``show stat`` still shows the user weight)."""
        deadline = time.monotonic() + timeout
        states: list[tuple[str, str, float]] = []
        while time.monotonic() < deadline:
            status = self.server_status()
            lines = self.command("show servers state web").splitlines()
            header = next((line.lstrip("# ").split() for line in lines if line.startswith("# be_id")), [])
            states = []
            for line in lines:
                row = dict(zip(header, line.split(), strict=False))
                name = row.get("srv_name", "")
                if line.startswith("#") or name not in status or status[name] == "no check":
                    continue  # the fail-open backups are never checked
                states.append((name, status[name], float(row.get("srv_time_since_last_change") or 0)))
            if states and all(st.startswith("UP") and since > slowstart for _, st, since in states):
                return
            time.sleep(0.5)
        raise TimeoutError(f"servers not settled after {timeout}s: {states}")

    def wait_status(self, server: str, wanted: str, *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            last = self.server_status().get(server, "")
            if last.startswith(wanted):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{server} is {last!r}, not {wanted!r}, after {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def log(self) -> str:
        try:
            return (Path(self.workdir) / "haproxy.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""
