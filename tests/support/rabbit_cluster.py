"""A private three-node RabbitMQ cluster on free ports, for failover tests.

Each node is a ``PrivateRabbitMQ`` (``ceNNNN@localhost``, its own AMQP and
distribution ports, its own directory). The nodes share the Erlang cookie of
the ``rabbitmq`` user that ``rabbitmq-server`` runs them as, so the second
and third join the first with ``stop_app`` / ``join_cluster`` / ``start_app``.
Quorum queues declared on it get members on all three nodes (the default
initial group size is the cluster size; ``members_of`` shows it).

``kill(node)`` SIGKILLs a node's Erlang VM (the pid from its pid file): no
clean shutdown, its TCP connections reset, the way a crashed host looks to
clients. ``start(node)`` brings it back; it rejoins the cluster by itself.
Never the shared broker at 127.0.0.1:5672.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.services import PrivateRabbitMQ

# One Erlang scheduler per node: three nodes share a 2-CPU machine.
SMALL_NODE_ERL_ARGS = "+S 1:1 +SDio 1 +A 4"
# Small nodes: no disk alarm on a nearly full test disk; quiet logs.
SMALL_NODE_CONFIG = "disk_free_limit.absolute = 50MB\nlog.file.level = warning\n"


def _wait(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what}: not after {timeout}s")


class RabbitCluster:
    def __init__(self, size: int = 3) -> None:
        self.nodes = [
            PrivateRabbitMQ(extra_config=SMALL_NODE_CONFIG, erl_args=SMALL_NODE_ERL_ARGS) for _ in range(size)
        ]
        self._by_name = {node.nodename: node for node in self.nodes}

    # --- addresses -----------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [node.nodename for node in self.nodes]

    def node(self, name: str) -> PrivateRabbitMQ:
        return self._by_name[name]

    def url_of(self, name: str, vhost: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.node(name).port}/{vhost}"

    def url(self, vhost: str = "") -> str:
        """A failover BROKER_URL listing every node (``;``-separated), in node order."""
        return ";".join(self.url_of(name, vhost) for name in self.names)

    def name_of_port(self, port: int) -> str:
        return next(node.nodename for node in self.nodes if node.port == port)

    # --- control ---------------------------------------------------------------
    def ctl(self, name: str, *args: str, tool: str = "rabbitmqctl", timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <name> ...`` (or another CLI tool) against one node; returns its stdout."""
        node = self.node(name)
        result = subprocess.run(
            [tool, "-n", name, *args],
            env=node._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} -n {name} {' '.join(args)}: rc={result.returncode}\n{result.stderr}")
        return result.stdout

    def start_all(self) -> None:
        """Start every node and join the others to the first."""
        first, *others = self.nodes
        first.start()
        for node in others:
            node.start()
            self.ctl(node.nodename, "stop_app")
            self.ctl(node.nodename, "join_cluster", first.nodename)
            self.ctl(node.nodename, "start_app")
        self.wait_running(self.names)

    def running_nodes(self, via: str | None = None) -> set[str]:
        """The nodes the cluster reports running, asked of ``via`` (else any live node)."""
        for name in [via] if via else self.alive():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                status = json.loads(self.ctl(name, "cluster_status", "--formatter", "json", timeout=20))
                return set(status.get("running_nodes", []))
        return set()

    def wait_running(self, names: list[str], *, timeout: float = 90.0) -> None:
        _wait(lambda: set(names) <= self.running_nodes(), timeout=timeout, what=f"cluster running {names}")

    def pid_of(self, name: str) -> int | None:
        path = self.node(name).pid_file
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text().strip())
        return None

    def is_alive(self, name: str) -> bool:
        pid = self.pid_of(name)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A zombie still answers signal 0: count it as dead.
        with contextlib.suppress(FileNotFoundError):
            return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        return False

    def alive(self) -> list[str]:
        return [name for name in self.names if self.is_alive(name)]

    def kill(self, name: str) -> None:
        """SIGKILL the node's Erlang VM and wait until it is gone (and its AMQP port refuses)."""
        pid = self.pid_of(name)
        if pid is None:
            raise RuntimeError(f"{name} has no pid file")
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: not self.is_alive(name), timeout=30, what=f"{name} gone", interval=0.05)
        self.node(name).pid_file.unlink(missing_ok=True)

    def start(self, name: str) -> None:
        """Start a killed (or stopped) node again; it rejoins the cluster from its own data."""
        self.node(name).start()
        self.wait_running([name])

    def cleanup(self) -> None:
        """Stop every node still running (killed ones are just removed) and delete their directories."""
        for node in self.nodes:
            if self.is_alive(node.nodename):
                node.cleanup()
            else:
                node.pid_file.unlink(missing_ok=True)
                shutil.rmtree(node.workdir, ignore_errors=True)

    # --- vhosts and queues -------------------------------------------------------
    def add_vhost(self, vhost: str) -> None:
        """A virtual host on the cluster (every node has it) with guest's full permissions."""
        name = self.alive()[0]
        self.ctl(name, "add_vhost", vhost)
        self.ctl(name, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def queue_info(self, queue: str, *, vhost: str = "/") -> dict[str, object]:
        """``name``, ``leader``, ``members`` and ``online`` of a quorum queue, asked of a live node."""
        last: Exception | None = None
        for name in self.alive():
            try:
                out = self.ctl(
                    name,
                    "list_queues",
                    "-p",
                    vhost,
                    "name",
                    "leader",
                    "members",
                    "online",
                    "--formatter",
                    "json",
                    "--quiet",
                    timeout=20,
                )
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last = exc
                continue
            for row in json.loads(out or "[]"):
                if row.get("name") == queue:
                    return row
            raise LookupError(f"no queue {queue!r} in vhost {vhost!r}")
        raise RuntimeError(f"no live node answered list_queues: {last}")

    def leader_of(self, queue: str, *, vhost: str = "/") -> str:
        return str(self.queue_info(queue, vhost=vhost)["leader"])

    def members_of(self, queue: str, *, vhost: str = "/") -> list[str]:
        members = self.queue_info(queue, vhost=vhost)["members"]
        return sorted(str(m) for m in members) if isinstance(members, list) else []

    def wait_leader_elsewhere(self, queue: str, *, not_on: str, vhost: str = "/", timeout: float = 60.0) -> str:
        """Wait until the queue has a leader on a node other than ``not_on`` (a new election after a kill)."""
        found: list[str] = []

        def elected() -> bool:
            with contextlib.suppress(RuntimeError, LookupError):
                leader = self.leader_of(queue, vhost=vhost)
                if leader and leader != not_on and leader in self.alive():
                    found.append(leader)
                    return True
            return False

        _wait(elected, timeout=timeout, what=f"a new leader of {queue}", interval=0.5)
        return found[-1]

    def connections_on(self, name: str, *, vhost: str = "/") -> list[dict[str, object]]:
        """Client connections node ``name`` itself holds in ``vhost`` (``list_connections`` lists the
        whole cluster's; ``port``, the server side, names the node's own listener)."""
        port = self.node(name).port
        out = self.ctl(name, "list_connections", "port", "vhost", "peer_port", "--formatter", "json", "--quiet")
        return [row for row in json.loads(out or "[]") if row.get("vhost") == vhost and row.get("port") == port]
