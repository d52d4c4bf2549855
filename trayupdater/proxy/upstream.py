"""Keep-alive connections to one backend."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from trayupdater.proxy.sockets import blocking_with_timeouts, readable_now

POOL_IDLE_SECONDS = 30.0  # drop pooled upstream connections older than this


@dataclass(frozen=True)
class Backend:
    """Where requests go: a child server on loopback. ``label`` is its version, for logs."""

    host: str
    port: int
    label: str


class UpstreamPool:
    """Idle keep-alive connections to one backend (LIFO: the warmest socket first)."""

    def __init__(self, backend: Backend, timeout: float, max_idle: int) -> None:
        self.backend = backend
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle: list[tuple[socket.socket, float]] = []
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self, *, check: bool) -> socket.socket | None:
        """A pooled connection, or None when a new one must be opened.

        ``check``: make sure it is still open first (one system call). Needed when the
        request could not be retried on another connection if this one turned out dead.
        """
        while True:
            with self._lock:
                if not self._idle:
                    return None
                sock, since = self._idle.pop()
            # Readable while idle means the backend closed it (or sent junk): not reusable.
            if time.monotonic() - since < POOL_IDLE_SECONDS and not (check and readable_now(sock)):
                return sock
            sock.close()

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.backend.host, self.backend.port), self._timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            blocking_with_timeouts(sock, self._timeout)
        except OSError:
            sock.close()
            raise
        return sock

    def release(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append((sock, time.monotonic()))
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock, _ in idle:
            sock.close()
