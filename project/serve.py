"""One URL for everything, on one machine: HAProxy in front of gunicorn (HTTP) and uvicorn (``/ws/``).

``make up`` runs this as its ``web`` process (the entrypoint's ``web-local``
role); containers run the same pieces as separate services (docker-compose.yml).
It starts the entrypoint's ``web`` role (gunicorn on ``project.wsgi``, every
HTTP path) and ``web-ws`` role (uvicorn on ``project.asgi``, WebSockets) on
loopback ports of their own, waits until both accept connections, then starts
HAProxy with ``docker/haproxy.cfg`` on ``WEB_HOST:WEB_PORT``, routing ``/ws/``
to uvicorn and everything else to gunicorn. bench/results/api.md measured why.

It stops all three when it gets SIGTERM or SIGINT, or when any one of them
exits (its exit status becomes this one's). Without HAProxy installed it falls
back to the ``web-asgi`` role (uvicorn alone serves HTTP and WebSockets) and
says so.

Environment: ``WEB_HOST`` / ``WEB_PORT`` (the public address, 127.0.0.1:8000),
``WEB_HTTP_PORT`` / ``WEB_WS_PORT`` (the internal ones; free ports if unset),
``HAPROXY_STATS_PORT`` (HAProxy's stats and Prometheus page; a free port if unset).
Arguments after ``--ws-args`` go to uvicorn; by default its access log is on
(query-string tokens are redacted from it, apps/common/logging.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
HAPROXY_CFG = REPO / "docker" / "haproxy.cfg"
START_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port(name: str) -> int:
    value = os.environ.get(name)
    return int(value) if value else _free_port()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _say(message: str) -> None:
    print(f"[serve] {message}", file=sys.stderr, flush=True)


class Group:
    """Child processes that live and die together."""

    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def start(self, name: str, argv: list[str], **env: str) -> None:
        self.children[name] = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **env})

    def exited(self) -> tuple[str, int] | None:
        for name, child in self.children.items():
            code = child.poll()
            if code is not None:
                return name, code
        return None

    def wait_port(self, name: str, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(port):
            if self.exited() or self.stopping:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"[serve] {name} does not accept connections on {port} after {START_TIMEOUT_S:.0f}s")
            time.sleep(0.1)

    def stop(self, grace_s: float) -> None:
        """SIGTERM to every child still running (they finish in-flight work), SIGKILL past the grace."""
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ws-args", nargs=argparse.REMAINDER, default=["--access-log"], help="extra arguments for uvicorn"
    )
    args = parser.parse_args()
    host = os.environ.get("WEB_HOST", "127.0.0.1")
    public_port = int(os.environ.get("WEB_PORT", "8000"))
    grace_s = float(os.environ.get("GRACEFUL_SHUTDOWN_SECONDS", "20")) + 5
    group = Group()

    def on_signal(signum: int, _frame: object) -> None:
        group.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if not shutil.which("haproxy"):
        _say("haproxy is not installed: uvicorn serves HTTP and WebSockets alone (apt-get install haproxy)")
        group.start("web-asgi", [str(ENTRYPOINT), "web-asgi", *args.ws_args], BIND_HOST=host, PORT=str(public_port))
    else:
        http_port, ws_port = _port("WEB_HTTP_PORT"), _port("WEB_WS_PORT")
        internal = {"BIND_HOST": "127.0.0.1", "NUM_PROXIES": "1"}
        group.start("web", [str(ENTRYPOINT), "web"], PORT=str(http_port), **internal)
        group.start("web-ws", [str(ENTRYPOINT), "web-ws", *args.ws_args], PORT=str(ws_port), **internal)
        group.wait_port("web", http_port)
        group.wait_port("web-ws", ws_port)
        workdir = tempfile.mkdtemp(prefix="ce-haproxy-")
        group.start(
            "haproxy",
            ["haproxy", "-W", "-db", "-f", str(HAPROXY_CFG)],
            HAPROXY_BIND=f"{host}:{public_port}",
            HAPROXY_STATS_BIND=f"127.0.0.1:{_port('HAPROXY_STATS_PORT')}",
            HAPROXY_SOCKET=str(Path(workdir) / "admin.sock"),
            WEB1_ADDR=f"127.0.0.1:{http_port}",
            WEB2_ADDR=f"127.0.0.1:{http_port}",
            WS1_ADDR=f"127.0.0.1:{ws_port}",
            WS2_ADDR=f"127.0.0.1:{ws_port}",
        )
        _say(f"http://{host}:{public_port}/ -> gunicorn on :{http_port}, /ws/ -> uvicorn on :{ws_port}")

    while not group.stopping:
        ended = group.exited()
        if ended:
            name, code = ended
            _say(f"{name} exited with status {code}: stopping the others")
            group.stop(grace_s)
            return code or 1
        time.sleep(0.2)
    group.stop(grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
