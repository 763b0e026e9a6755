"""A TCP proxy on 127.0.0.1 that can black-hole its open connections: the peer neither closes nor answers.

What a dead network path looks like to a client (a crashed host, a dropped NAT
entry, a partition): the socket stays open and every read waits. Connections
opened after ``blackhole()`` are forwarded normally again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

from tests.support.services import free_port


@dataclass
class BlackholeProxy:
    upstream_port: int
    port: int = field(default_factory=free_port)
    _server: socket.socket | None = None
    _live: list[threading.Event] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self) -> None:
        """Every connection open now stops forwarding, both ways, and stays open."""
        for alive in self._live:
            alive.clear()
        self._live = []

    def stop(self) -> None:
        self._stop.set()
        self.blackhole()
        if self._server is not None:
            self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()  # type: ignore[union-attr]
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:  # the upstream is down (restarting): refuse this one, as it would
                client.close()
                continue
            upstream.settimeout(None)
            alive = threading.Event()
            alive.set()
            self._live.append(alive)
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target, alive), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, alive: threading.Event) -> None:
        source.settimeout(0.2)
        while alive.is_set() and not self._stop.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if not alive.is_set():
                break  # black-holed while this chunk was in flight: drop it
            with contextlib.suppress(OSError):
                target.sendall(data)
        # Black-holed: hold the sockets open and silent until the test ends.
        while not alive.is_set() and not self._stop.is_set():
            self._stop.wait(0.5)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.close()
