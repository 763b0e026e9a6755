"""Fewer system calls per message for py-amqp (pinned: amqp 5.4).

py-amqp writes every published message with its own ``sendall`` and reads
every frame with two or three exact-size ``recv`` calls. Profiles of the relay
and the subscriber runner on the 2-CPU benchmark machine showed those system
calls as the largest single cost (``sendall``: a third of the relay's time),
so the relay gathers a whole batch into one write, and consumers read through
a 128 KiB buffer. Both hook py-amqp's TCP transport (``_write``,
``_quick_recv``); where the transport lacks them (TLS, another version) they
do nothing and py-amqp's own I/O is used.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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
