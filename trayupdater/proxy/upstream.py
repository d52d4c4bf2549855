"""Keep-alive connections to one backend, and new ones opened a few at a time.

A burst of requests on an empty pool (the app starting, the first requests after a switch)
must not become a burst of connects: a backend with a small accept backlog (Python's
``http.server`` has 5) drops the SYNs past it, and each dropped one costs its client a
second or more (the SYN retransmit). So at most ``MAX_CONNECTING`` connects are under way
at once; a request beyond that waits for whichever comes first, a connection released to
the pool or a connect finished (:class:`steps.Wakeup`), and costs no thread meanwhile.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

from trayupdater.proxy.sockets import blocking_with_timeouts, readable_now
from trayupdater.proxy.steps import BLOCK, Steps, Wait, Wakeup

_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, 10035})

POOL_IDLE_SECONDS = 30.0  # drop pooled upstream connections older than this
MAX_CONNECTING = 8  # connects under way at once to one backend (see the module doc)


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
        self._connecting = 0
        self._waiters: deque[Wakeup] = deque()
        # An address literal can be connected to without blocking (see connecting()); a
        # name would have to be resolved first, which may block.
        self._family: socket.AddressFamily | None = None
        try:
            version = ipaddress.ip_address(backend.host).version
        except ValueError:
            pass
        else:
            self._family = socket.AF_INET6 if version == 6 else socket.AF_INET

    def get(self) -> Steps[tuple[socket.socket, bool]]:
        """A connection: pooled (True: reused) or new, waiting as steps (see the module doc)
        for a turn to connect. Raises as :meth:`connect` does; ``TimeoutError`` after the
        backend timeout (thrown in by the driver)."""
        while True:
            wakeup = Wakeup()
            got = self._take(wakeup)
            if isinstance(got, socket.socket):
                return got, True
            if got:
                try:
                    return (yield from self.connecting()), False
                finally:
                    self._connected()
            yield wakeup  # a connection released, or a connect finished: try again

    def _take(self, wakeup: Wakeup) -> socket.socket | bool:
        """A pooled connection; else True: connect (a turn is taken: _connected() after);
        else False: wait, ``wakeup`` fires when a connection or a turn may be free."""
        while True:
            with self._lock:
                if self._idle:
                    sock, since = self._idle.pop()
                elif self._connecting < MAX_CONNECTING:
                    self._connecting += 1
                    return True
                else:
                    self._waiters.append(wakeup)
                    return False
            # Readable while idle: the backend closed it, or sent bytes of no request (after
            # its answer: another client would take them for its own). Never reused.
            if time.monotonic() - since < POOL_IDLE_SECONDS and not readable_now(sock):
                return sock
            sock.close()

    def _connected(self) -> None:
        """A connect ended (made or failed): its turn goes to a waiting request."""
        with self._lock:
            self._connecting -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while True:
            with self._lock:
                if not self._waiters:
                    return
                wakeup = self._waiters.popleft()
            if wakeup.fire():
                return  # else it had given up: tell the next one

    def connect(self) -> socket.socket:
        """A new connection, blocking (up to the timeout) until it is made."""
        address = (self.backend.host, self.backend.port)
        return self._ready(socket.create_connection(address, self._timeout))

    def connecting(self) -> Steps[socket.socket]:
        """A new connection, waiting for it as a step (see steps.py) instead of blocking.

        Raises as :meth:`connect` does; ``TimeoutError`` is thrown in by the driver. A host
        name (not an address) is resolved and connected to blocking, after a BLOCK.
        """
        if self._family is None:
            yield BLOCK
            return self.connect()
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            err = sock.connect_ex((self.backend.host, self.backend.port))
            if err in _IN_PROGRESS:
                yield Wait(sock, write=True)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))  # ConnectionRefusedError for a refusal
        except BaseException:
            sock.close()
            raise
        return self._ready(sock)

    def _ready(self, sock: socket.socket) -> socket.socket:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            blocking_with_timeouts(sock, self._timeout)
        except OSError:
            sock.close()
            raise
        return sock

    def release(self, sock: socket.socket) -> None:
        with self._lock:
            kept = not self._closed and len(self._idle) < self._max_idle
            if kept:
                self._idle.append((sock, time.monotonic()))
        if not kept:
            sock.close()
        self._wake_one()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            waiters, self._waiters = list(self._waiters), deque()
        for sock, _ in idle:
            sock.close()
        for wakeup in waiters:
            wakeup.fire()
