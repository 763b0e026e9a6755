"""Fewer system calls per message for py-amqp (pinned: amqp 5.4).

py-amqp writes every published message with its own ``sendall`` and reads
every frame with two or three exact-size ``recv`` calls. Profiles of the relay
and the subscriber runner on the 2-CPU benchmark machine showed those system
calls as the largest single cost (``sendall``: a third of the relay's time),
so the relay gathers a whole batch into one write, and consumers read through
a 128 KiB buffer. Both hook py-amqp's TCP transport (``_write``,
``_quick_recv``); where the transport lacks them (TLS, another version) they
do nothing and py-amqp's own I/O is used.

It also opens the platform's own long-lived connections (relay, subscriber
runner, archiver, readiness) to a failover ``BROKER_URL``: several URLs joined
by ``;`` (``amqp://u:p@h1:5672//;amqp://u:p@h2:5672//;amqp://u:p@h3:5672//``),
the nodes of one RabbitMQ cluster. ``BrokerHosts.connect`` tries each host
once, and after a connection broke it starts with the host after the one it
had: a fresh ``kombu.Connection("a;b;c").connect()`` always begins at ``a``
and gives up after two hosts (``connect`` is ``_ensure_connection(max_retries=1)``),
so with ``a`` and ``b`` down it never reaches ``c``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from kombu import Connection
from kombu.exceptions import OperationalError

# The order kombu moves through the hosts after a failure. Round-robin, not
# shuffle: the order of BROKER_URL is the order tried (predictable, and the
# cluster test checks it); kombu's shuffle never shuffles the first host anyway,
# so it would not spread connections either. Celery uses the same (project/celery.py).
FAILOVER_STRATEGY = "round-robin"

READ_CHUNK = 128 * 1024


def _transport(kombu_connection: Any) -> Any:
    return getattr(getattr(kombu_connection, "connection", None), "transport", None)


@contextmanager
def batched_writes(kombu_connection: Any) -> Iterator[None]:
    """Collect every frame written inside the block and send them with one ``sendall`` at its end."""
    transport = _transport(kombu_connection)
    sock = getattr(transport, "sock", None)
    if transport is None or not isinstance(sock, socket.socket) or "_write" not in vars(transport):
        yield
        return
    real_write: Callable[[bytes], Any] = transport._write
    chunks: list[bytes] = []
    # py-amqp hands over a live view of a buffer it reuses: copy each frame.
    transport._write = lambda data: chunks.append(bytes(data))
    try:
        yield
    finally:
        transport._write = real_write
    if chunks:
        transport.write(b"".join(chunks))


class _BufferedRecv:
    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self._buf = b""
        self._pos = 0

    def __call__(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            self._buf = self._recv(max(n, READ_CHUNK))
            self._pos = 0
            if not self._buf:
                return self._buf
        end = self._pos + n
        out = self._buf[self._pos : end]
        self._pos = min(end, len(self._buf))
        return out


def buffered_reads(kombu_connection: Any) -> None:
    """Read the connection's socket in 128 KiB chunks (call once, right after connecting)."""
    transport = _transport(kombu_connection)
    sock = getattr(transport, "sock", None)
    if transport is None or not isinstance(sock, socket.socket) or "_quick_recv" not in vars(transport):
        return
    transport._quick_recv = _BufferedRecv(sock.recv)


def broker_urls(url: str) -> list[str]:
    """The URLs of a failover ``BROKER_URL`` (``;``-separated), in order; a plain URL is a list of one."""
    urls = [part.strip() for part in url.split(";") if part.strip()]
    if not urls:
        raise ValueError("BROKER_URL names no broker")
    return urls


class BrokerHosts:
    """The hosts of a failover ``BROKER_URL`` and which one the next connection tries first."""

    def __init__(self, url: str) -> None:
        self.urls = broker_urls(url)
        self._first = 0
        self.current: str | None = None  # the URL of the last successful connection

    @property
    def current_host(self) -> str | None:
        """``host:port`` of the last successful connection (for logs: no credentials)."""
        return urlsplit(self.current).netloc.rpartition("@")[2] if self.current else None

    def connect(self, *, timeout: float | None = None, **connection_kwargs: Any) -> Connection:
        """A connected ``kombu.Connection`` to the first host that answers, each tried once, no sleeps.

        The hosts are tried starting after the one the previous connection
        reached (a reconnect after a node died does not wait on the dead one
        first). Raises ``ConnectionError`` when none answered (an ``OSError``,
        which every reconnect loop of the platform already treats as a broker error).
        """
        order = self.urls[self._first :] + self.urls[: self._first]
        conn = Connection(";".join(order), failover_strategy=FAILOVER_STRATEGY, **connection_kwargs)
        failed: list[str] = []
        try:
            # One attempt per host: kombu switches to the next alternate after each
            # failure and sleeps only after a whole cycle, which max_retries stops short of.
            conn.ensure_connection(
                errback=lambda exc, interval: failed.append(repr(exc)), max_retries=len(order) - 1, timeout=timeout
            )
        except OperationalError as exc:
            conn.collect()
            self._first = (self._first + 1) % len(self.urls)
            raise ConnectionError(f"no broker of {len(order)} answered: {'; '.join(failed + [repr(exc)])}") from exc
        reached = (self._first + len(failed)) % len(self.urls)
        self.current = self.urls[reached]
        self._first = (reached + 1) % len(self.urls)
        return conn
