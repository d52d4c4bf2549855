"""The zero-downtime reverse proxy in front of the child server.

Threads: a bounded pool of workers serves requests; idle client connections (new, between
keep-alive requests, or with a partial request head) are *parked* in one selector thread
(:class:`_Parker`), not held by a worker. The parker accepts connections, queues those that
become readable for the workers, and closes those past their deadline. A worker serves every
complete request a connection holds, waits a moment for the next one when no other
connection needs a worker, then parks it again. So threads serve requests, not sockets: a
thousand idle keep-alive clients (or slow-loris clients trickling a head) cost a selector
entry each.

Zero downtime: each request enters the *current* :class:`Generation` (one per backend
switch) when it starts and leaves it when its response is complete. :meth:`ReverseProxy.switch`
swaps the current generation atomically; :meth:`ReverseProxy.drain` waits until the old one
has no request in flight, after which the old child can be stopped. Client keep-alive
connections are never tied to a backend, so a switch never breaks them. Each generation has
its own keep-alive pool of upstream connections, closed once it is switched away and idle.

HTTP/1.1 parsing and framing live in :mod:`trayupdater.http11`.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import select
import selectors
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any, Protocol

from trayupdater import http11
from trayupdater.errors import ConfigError
from trayupdater.http11 import BufferedSocket, Framing, Head, HttpError, SinkError, SourceError

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024  # the default of 5 gave a 1.7 s p99 under a burst of connections
CLOSE_GRACE = 2.0  # close(): how long in-flight requests may finish before being cut
LINGER_SECONDS = 1.0  # after an error response: keep reading so the close is not an RST
# After a response, wait this long for the next request before parking (only while no other
# connection waits for a worker): a hand-off to the parker and back costs more CPU than a
# short wait for a busy client.
LINGER_NEXT_REQUEST = 0.002
POOL_IDLE_SECONDS = 30.0  # drop pooled upstream connections older than this
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

# Upstream error kinds reported to ProxyObserver.upstream_error.
ERR_NO_BACKEND = "no_backend"
ERR_CONNECT = "connect"
ERR_STALE = "stale_connection"  # a pooled connection was dead; the request was retried
ERR_CLOSED = "closed_before_response"
ERR_TIMEOUT = "timeout"
ERR_PROTOCOL = "bad_response"
ERR_BODY = "response_body"  # the backend failed in the middle of a response body

_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
# The proxy writes these itself in the upstream request.
_REQUEST_DROP = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "expect"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True)
class Backend:
    """Where requests go: a child server on loopback. ``label`` is its version, for logs."""

    host: str
    port: int
    label: str


class ProxyObserver(Protocol):
    """Metrics hook. Called from worker threads; must be quick and must not raise."""

    def request_done(self, status: int, seconds: float, backend_label: str | None) -> None: ...

    def upstream_error(self, kind: str) -> None: ...


class NullObserver:
    """The default observer: records nothing."""

    def request_done(self, status: int, seconds: float, backend_label: str | None) -> None:
        pass

    def upstream_error(self, kind: str) -> None:
        pass


def _blocking_with_timeouts(sock: socket.socket, seconds: float) -> None:
    """Blocking mode with kernel send/receive timeouts.

    With ``settimeout()`` CPython polls before every recv/send: twice the system calls on the
    hot path. SO_RCVTIMEO/SO_SNDTIMEO bound each call without that; an expiry surfaces as an
    OSError that :func:`_is_timeout` recognises.
    """
    sock.settimeout(None)
    if sys.platform == "win32":
        value = struct.pack("I", max(1, int(seconds * 1000)))  # DWORD milliseconds
    else:
        whole = int(seconds)
        value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))  # struct timeval
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


_TIMEOUT_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ETIMEDOUT, 10060})


def _is_timeout(exc: BaseException) -> bool:
    """Did a socket call fail because a kernel timeout (or a Python one) expired?"""
    return isinstance(exc, TimeoutError) or (
        isinstance(exc, OSError) and exc.errno in _TIMEOUT_ERRNOS
    )


def _wait_readable(sock: socket.socket, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``sock`` to become readable."""
    if hasattr(select, "poll"):  # select() cannot take descriptors >= FD_SETSIZE
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    return bool(select.select([sock], [], [], timeout)[0])


if hasattr(socket, "MSG_DONTWAIT"):

    def _readable_now(sock: socket.socket) -> bool:
        """Is ``sock`` readable without waiting? For an idle pooled connection: EOF or junk."""
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

else:  # Windows

    def _readable_now(sock: socket.socket) -> bool:
        """Is ``sock`` readable without waiting? For an idle pooled connection: EOF or junk."""
        return _wait_readable(sock, 0)


class _UpstreamPool:
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
            if time.monotonic() - since < POOL_IDLE_SECONDS and not (check and _readable_now(sock)):
                return sock
            sock.close()

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.backend.host, self.backend.port), self._timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _blocking_with_timeouts(sock, self._timeout)
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


class Generation:
    """One backend switch: the backend, its upstream pool, and its requests in flight."""

    def __init__(
        self,
        backend: Backend | None,
        pool: _UpstreamPool | None,
        fallback: Backend | None = None,
    ) -> None:
        self.backend = backend
        self.fallback = fallback
        self._pool = pool
        self._in_flight = 0  # guarded by ReverseProxy._lock
        self._retired = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def __repr__(self) -> str:
        label = self.backend.label if self.backend else None
        return f"Generation(backend={label!r}, in_flight={self._in_flight})"


class _Client(BufferedSocket):
    """A client connection: its socket, unread bytes, and parking state."""

    __slots__ = ("body_unread", "deadline", "ip", "lingering", "mid_head")

    def __init__(self, sock: socket.socket, ip: str, deadline: float) -> None:
        super().__init__(sock)
        self.ip = ip
        self.deadline = deadline  # when the parker gives up on it
        self.mid_head = True  # waiting for a head (a new connection counts): header_timeout
        self.lingering = False  # error sent and write side shut: read and discard until EOF
        self.body_unread = False  # the last request's body was not read to its end


class _Slot:
    """What one worker is using right now, so close() can cut it loose."""

    __slots__ = ("client", "upstream")

    def __init__(self) -> None:
        self.client: socket.socket | None = None
        self.upstream: socket.socket | None = None


@dataclass(slots=True)
class _Plan:
    """One request as it will be sent upstream, kept for a possible retry."""

    req: Head
    head: str  # upstream request head without the final CRLF
    framing: Framing
    length: int
    started: float
    body: bytes = b""  # the whole body when it was already buffered
    buffered: bool = False  # True when ``body`` is the whole body (or there is none)

    def __post_init__(self) -> None:
        self.buffered = self.framing is Framing.NONE


class _Retry(Exception):
    """The attempt reached no backend before anything was sent to the client: try again."""


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _error_response(status: int, *, body: bool = True, retry_after: bool = False) -> bytes:
    reason = _REASONS.get(status, "Error")
    text = f"{status} {reason}\n".encode()
    extra = "Retry-After: 1\r\n" if retry_after else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(text)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + (text if body else b"")


_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)  # Windows lacks it; readiness is exact there


def _read_nowait(conn: _Client) -> bool | None:
    """Read what a ready connection has: True if data, False on EOF/error, None if nothing."""
    try:
        data = conn.sock.recv(http11.RECV_SIZE, _DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return False
    conn.buf += data
    return bool(data)


def _new_client(sock: socket.socket, addr: tuple, proxy: ReverseProxy) -> _Client | None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _blocking_with_timeouts(sock, proxy.client_idle_timeout)
    except OSError:
        sock.close()
        return None
    return _Client(sock, str(addr[0]), time.monotonic() + proxy.header_timeout)


def _expire(conn: _Client) -> None:
    """Close a parked connection whose deadline passed, never blocking the calling thread."""
    with contextlib.suppress(OSError):
        conn.sock.setblocking(False)
        # Take what arrived meanwhile: it decides 408 vs. silence, and unread bytes would
        # turn the close into an RST.
        while len(conn.buf) <= http11.RECV_SIZE and (data := conn.sock.recv(http11.RECV_SIZE)):
            conn.buf += data
    if conn.mid_head and conn.buf and not conn.lingering:
        with contextlib.suppress(OSError):  # a slow-loris client: tell it why
            conn.sock.send(_error_response(408))
    conn.sock.close()


def _linger_read(conn: _Client) -> bool:
    """Discard what a refused client still sends; False once it closed (then close it)."""
    try:
        data = conn.sock.recv(http11.RECV_SIZE)
    except BlockingIOError:
        return True
    except OSError:
        data = b""
    if not data:
        conn.sock.close()
    return bool(data)


class _Parker:
    """The selector thread: owns the listening socket and every idle connection.

    When a parked connection becomes readable it goes on the queue, where a worker picks it
    up; when its deadline passes it is closed (with a 408 for a half-sent head).
    """

    _LISTENER = object()
    _WAKE = object()

    def __init__(self, proxy: ReverseProxy, listener: socket.socket) -> None:
        self._proxy = proxy
        self._listener = listener
        self._queue: SimpleQueue[_Client | None] = SimpleQueue()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self._incoming: collections.deque[_Client] = collections.deque()
        self._parked: dict[int, _Client] = {}
        self._stop_accepting = False
        self._accepting = True
        self._accept_stopped = threading.Event()
        self._stopping = False
        self._paused_until = 0.0  # accept() failed (out of descriptors): retry later
        self._scan_every = proxy._scan_every

    # -- called from workers and close() ---------------------------------------------------

    def next_ready(self) -> _Client | None:
        return self._queue.get()

    def linger_ok(self) -> bool:
        return self._queue.empty()  # nobody waits for a worker: lingering costs no one

    def park(self, conn: _Client) -> None:
        # Append before reading the flag; run() clears the flag before draining: no lost wake.
        self._incoming.append(conn)
        if not self._wake_pending:
            self._wake_pending = True
            self._wake()

    def parked_count(self) -> int:
        return len(self._parked) + len(self._incoming)

    def stop_accepting(self) -> None:
        self._stop_accepting = True
        self._wake()
        self._accept_stopped.wait(2.0)

    def stop(self, workers: int) -> None:
        self._stopping = True
        self._wake()
        for _ in range(workers):
            self._queue.put(None)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # buffer full: a wake-up is pending anyway
            self._wake_w.send(b"\0")

    # -- the selector thread ---------------------------------------------------------------

    def run(self) -> None:
        self._sel.register(self._listener, selectors.EVENT_READ, self._LISTENER)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._WAKE)
        next_scan = time.monotonic() + self._scan_every
        try:
            while not self._stopping:
                now = time.monotonic()
                for key, _ in self._sel.select(max(0.0, next_scan - now)):
                    data = key.data
                    if data is self._LISTENER:
                        self._accept()
                    elif data is self._WAKE:
                        self._drain_wake()
                    else:
                        self._ready(data)
                self._wake_pending = False
                while self._incoming:
                    self._register(self._incoming.popleft())
                if self._stop_accepting and self._accepting:
                    if not self._paused_until:
                        self._sel.unregister(self._listener)
                    self._accepting = False
                    self._accept_stopped.set()
                now = time.monotonic()
                if now >= next_scan:
                    expired = [c for c in self._parked.values() if c.deadline <= now]
                    for conn in expired:
                        del self._parked[conn.sock.fileno()]
                        self._sel.unregister(conn.sock)
                        _expire(conn)
                    next_scan = now + self._scan_every
                    if self._accepting and self._paused_until and now >= self._paused_until:
                        self._paused_until = 0.0
                        self._sel.register(self._listener, selectors.EVENT_READ, self._LISTENER)
        except Exception:
            log.exception("proxy selector thread failed")
            self._proxy._closing = True
        finally:
            self._accept_stopped.set()
            while self._incoming:
                self._incoming.popleft().sock.close()
            for conn in self._parked.values():
                conn.sock.close()
            self._parked.clear()
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _accept(self) -> None:
        for _ in range(64):  # bounded so a connection storm cannot starve parked clients
            try:
                sock, addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE and friends: pause instead of spinning
                log.warning("proxy accept failed: %s; pausing accepts", exc)
                self._sel.unregister(self._listener)
                self._paused_until = time.monotonic() + 0.1
                return
            conn = _new_client(sock, addr, self._proxy)
            if conn is not None:
                self._register(conn)

    def _register(self, conn: _Client) -> None:
        if self._stopping:
            conn.sock.close()
            return
        try:
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError):  # closed meanwhile
            conn.sock.close()
            return
        self._parked[conn.sock.fileno()] = conn

    def _ready(self, conn: _Client) -> None:
        self._parked.pop(conn.sock.fileno(), None)
        self._sel.unregister(conn.sock)
        if not conn.lingering:
            self._queue.put(conn)
        elif _linger_read(conn):
            self._register(conn)


class ReverseProxy:
    """HTTP/1.1 reverse proxy with atomic backend switch and drain. See the module doc.

    ``sock``: an already listening socket (handed over by a predecessor) instead of binding
    ``bind``:``port``; the caller keeps ownership of it. ``workers``: request threads.
    ``backend_timeout``: connect and per-read/write limit towards the backend (then 504).
    ``client_idle_timeout``: how long a keep-alive connection may stay silent, and the
    per-read/write limit towards a client mid-request. ``header_timeout``: from a new
    connection or the first byte of a head to its end (then 408). ``max_header_bytes``:
    larger heads get 431. ``observer``: metrics hook, see :class:`ProxyObserver`.
    """

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = 8080,
        *,
        sock: socket.socket | None = None,
        workers: int = 64,
        backend_timeout: float = 30.0,
        client_idle_timeout: float = 60.0,
        header_timeout: float = 10.0,
        max_header_bytes: int = 64 * 1024,
        observer: ProxyObserver | None = None,
    ) -> None:
        if not 1 <= workers <= 4096:
            raise ConfigError(f"proxy workers must be between 1 and 4096, got {workers}")
        if not 0 <= port <= 65535:
            raise ConfigError(f"proxy port must be between 0 and 65535, got {port}")
        for name, value in (
            ("backend_timeout", backend_timeout),
            ("client_idle_timeout", client_idle_timeout),
            ("header_timeout", header_timeout),
        ):
            if not value > 0:
                raise ConfigError(f"proxy {name} must be a positive number of seconds, got {value}")
        if max_header_bytes < 1024:
            raise ConfigError(f"proxy max_header_bytes must be >= 1024, got {max_header_bytes}")
        self._bind_host = bind
        self._bind_port = port
        self._given_sock = sock
        self._workers = workers
        self.backend_timeout = float(backend_timeout)
        self.client_idle_timeout = float(client_idle_timeout)
        self.header_timeout = float(header_timeout)
        self.max_header_bytes = max_header_bytes
        self._observer: ProxyObserver = observer or NullObserver()

        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._gen = Generation(None, None)
        self._total_in_flight = 0
        self._slots: list[_Slot] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._parker: _Parker | None = None
        # How often deadlines (header_timeout, idle keep-alive) are checked.
        self._scan_every = min(
            1.0, max(0.02, min(self.header_timeout, self.client_idle_timeout) / 4)
        )
        self._address: tuple[str, int] | None = None
        self._closing = False
        self._closed = False

    # -- public API ------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (unless a listening socket was given) and start the threads."""
        if self._parker is not None:
            raise RuntimeError("proxy already started")
        listener = self._given_sock if self._given_sock is not None else self._listen()
        listener.setblocking(False)
        self._listener = listener
        host, port = listener.getsockname()[:2]
        self._address = (str(host), int(port))
        self._parker = parker = _Parker(self, listener)
        self._spawn("proxy-parker", parker.run)
        for i in range(self._workers):
            slot = _Slot()
            self._slots.append(slot)
            self._spawn(f"proxy-worker-{i}", lambda slot=slot: self._work(slot))
        log.info("proxy listening on %s:%d", *self._address)

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("proxy not started")
        return self._address

    @property
    def current(self) -> Backend | None:
        return self._gen.backend

    @property
    def fallback(self) -> Backend | None:
        return self._gen.fallback

    def hold(self) -> Generation:
        """No backend for now, but one is coming (a restart)."""
        return self.switch(None)

    def backend_down(self, backend: Backend) -> bool:
        """``backend`` died: go to the current generation's fallback, or hold."""
        with self._lock:
            gen = self._gen
        if gen.backend == backend:
            if gen.fallback is not None:
                self.switch(gen.fallback)
            else:
                self.hold()
            return True
        if gen.fallback == backend:
            gen.fallback = None
            return True
        return False

    def switch(self, backend: Backend | None, *, fallback: Backend | None = None) -> Generation:
        """Route new requests to ``backend`` (None: answer 503); returns the old generation."""
        if backend is not None and not isinstance(backend, Backend):
            raise TypeError(f"switch() takes a Backend or None, not {type(backend).__name__}")
        pool = None
        if backend is not None:
            pool = _UpstreamPool(backend, self.backend_timeout, max_idle=self._workers)
        new = Generation(backend, pool, fallback)
        with self._lock:
            old, self._gen = self._gen, new
            old._retired = True
            idle = old._in_flight == 0
        if idle:
            old._close_pool()
        log.info("proxy switched to %s", backend.label if backend else "no backend")
        return old

    def drain(self, generation: Generation, timeout: float) -> bool:
        """Wait until ``generation`` has no request in flight; False if ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        with self._drained:
            while generation._in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._drained.wait(remaining)
        return True

    def listening_socket(self) -> socket.socket:
        """The listening socket, to hand over to a successor process."""
        sock = self._listener or self._given_sock
        if sock is None:
            raise RuntimeError("proxy not started")
        return sock

    def close(self) -> None:
        """Stop accepting, let in-flight requests finish for a short grace, then cut the rest."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        parker = self._parker
        if parker is None:
            return
        parker.stop_accepting()
        if self._given_sock is None and self._listener is not None:
            self._listener.close()  # a socket we were given belongs to the caller
        deadline = time.monotonic() + CLOSE_GRACE
        with self._drained:
            # Kept-alive connections get the grace too (parked, or held by a worker waiting
            # for their next request): that request is answered with "Connection: close"
            # instead of racing a close of the connection.
            while self._has_clients(parker) and time.monotonic() < deadline:
                self._drained.wait(min(0.05, deadline - time.monotonic()))
        parker.stop(len(self._slots))
        for slot in self._slots:
            _shutdown(slot.client)
            _shutdown(slot.upstream)
        for thread in self._threads:
            thread.join(timeout=5.0)
            if thread.is_alive():
                log.warning("proxy thread %s did not stop", thread.name)
        with self._lock:
            gen = self._gen
        gen._close_pool()

    def __enter__(self) -> ReverseProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _listen(self) -> socket.socket:
        where = f"{self._bind_host}:{self._bind_port}"
        try:
            info = socket.getaddrinfo(
                self._bind_host, self._bind_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except socket.gaierror as exc:
            raise OSError(f"proxy cannot listen on {where}: {exc}") from exc
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        try:
            if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):  # Windows: REUSEADDR would allow theft
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            else:  # restart quickly while old connections sit in TIME_WAIT
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(info[4])
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"proxy cannot listen on {where}: {exc.strerror}") from exc
        return sock

    def _spawn(self, name: str, target: object) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _has_clients(self, parker: Any) -> bool:
        held = any(slot.client is not None for slot in self._slots)
        return self._total_in_flight > 0 or held or parker.parked_count() > 0

    def _park(self, conn: _Client) -> None:
        parker = self._parker
        if parker is None:
            conn.sock.close()
            return
        # Closing: still park it. Its last response promised keep-alive, so its next request
        # may be on the wire; it is served (with "Connection: close") during close()'s grace.
        parker.park(conn)

    def _enter(self) -> Generation:
        with self._lock:
            gen = self._gen
            gen._in_flight += 1
            self._total_in_flight += 1
        return gen

    def _exit(self, gen: Generation) -> None:
        with self._lock:
            gen._in_flight -= 1
            self._total_in_flight -= 1
            idle = gen._in_flight == 0
            if idle or self._total_in_flight == 0:
                self._drained.notify_all()
        if idle and gen._retired:
            gen._close_pool()

    def _done(self, status: int, started: float, gen: Generation | None) -> None:
        label = gen.backend.label if gen is not None and gen.backend is not None else None
        try:
            self._observer.request_done(status, time.monotonic() - started, label)
        except Exception:
            log.exception("proxy observer failed")

    def _upstream_error(self, kind: str) -> None:
        try:
            self._observer.upstream_error(kind)
        except Exception:
            log.exception("proxy observer failed")

    # -- workers ---------------------------------------------------------------------------

    def _work(self, slot: _Slot) -> None:
        parker = self._parker
        assert parker is not None
        while True:
            conn = parker.next_ready()
            if conn is None:
                return
            slot.client = conn.sock
            try:
                self._serve(conn, slot)
            except Exception:
                log.exception("proxy worker failed; closing that connection")
                conn.sock.close()
            finally:
                slot.client = slot.upstream = None

    def _serve(self, conn: _Client, slot: _Slot) -> None:
        """Serve every complete request ``conn`` holds, then park or close it."""
        readable = True
        while True:
            if readable:
                got = _read_nowait(conn)
                if got is False:
                    conn.sock.close()
                    return
                if got is None:  # spurious readiness: nothing to read after all
                    self._park(conn)
                    return
            end = conn.buf.find(b"\r\n\r\n")
            limit = self.max_header_bytes
            if end < 0 and len(conn.buf) <= limit:
                # Wait for more in the selector, never in a worker (slow-loris).
                now = time.monotonic()
                if not conn.buf:
                    conn.mid_head = False
                    conn.deadline = now + self.client_idle_timeout
                elif not conn.mid_head:
                    conn.mid_head = True
                    conn.deadline = now + self.header_timeout
                self._park(conn)
                return
            if end < 0 or end + 4 > limit:
                self._reject(conn, 431, head_request=False)
                return
            head = bytes(conn.buf[: end + 4])
            del conn.buf[: end + 4]
            keep = self._handle(conn, head, slot)
            if conn.lingering:
                return  # an error was sent; the parker owns the connection now
            if not keep:
                # Not "or closing": a response that promised keep-alive must not be followed
                # by a close the client's next request could race; close() serves that
                # request (with "Connection: close") during its grace instead.
                self._finish(conn)
                return
            conn.mid_head = False
            # A pipelined request may already be buffered; else a busy client usually sends
            # its next request within microseconds: wait a moment rather than park.
            readable = (
                not conn.buf
                and self._parker is not None
                and self._parker.linger_ok()
                and _wait_readable(conn.sock, LINGER_NEXT_REQUEST)
            )

    def _reject(self, conn: _Client, status: int, *, head_request: bool) -> None:
        """Send a proxy-made error and close the connection gracefully."""
        try:
            conn.sock.sendall(_error_response(status, body=not head_request))
        except OSError:
            conn.sock.close()
            return
        self._linger(conn)

    def _finish(self, conn: _Client) -> None:
        """Close after a response. With unread request bytes (a body the proxy refused, a
        pipelined request) a plain close would send an RST, which can destroy the response
        before the client read it: shut the write side and read the rest first."""
        if conn.buf or conn.body_unread or _readable_now(conn.sock):
            self._linger(conn)
        else:
            conn.sock.close()

    def _linger(self, conn: _Client) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            conn.sock.close()
            return
        conn.lingering = True
        conn.buf.clear()
        conn.deadline = time.monotonic() + LINGER_SECONDS
        self._park(conn)

    def _handle(self, conn: _Client, raw: bytes, slot: _Slot) -> bool:
        """Serve one request whose head is ``raw``; True if the connection stays open."""
        started = time.monotonic()
        head_request = False
        try:
            req = http11.parse_request_head(raw)
            head_request = req.start[0] == "HEAD"
            framing, length = http11.request_framing(req)
            hosts = req.index.get("host")
            if hosts is None and req.minor >= 1:
                raise HttpError(400, "HTTP/1.1 request without Host")
            if hosts is not None and len(hosts) > 1:
                raise HttpError(400, "more than one Host header")
            if req.start[0] == "CONNECT":
                raise HttpError(501, "CONNECT is not supported by a reverse proxy")
            expect = req.get("expect")
            if expect is not None and expect.strip().lower() != "100-continue":
                raise HttpError(417, f"unsupported expectation {expect[:40]!r}")
        except HttpError as exc:
            log.debug("proxy rejected a request from %s: %s", conn.ip, exc)
            self._reject(conn, exc.status, head_request=head_request)
            self._done(exc.status, started, None)
            return False
        return self._proxy(conn, req, framing, length, started, slot)

    def _upstream_head(self, req: Head, conn: _Client, framing: Framing, length: int) -> str:
        method, target, _ = req.start
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        lines += http11.forwarded_fields(req, _REQUEST_DROP)
        prior = ", ".join(req.index.get("x-forwarded-for", ()))
        lines.append(f"X-Forwarded-For: {prior + ', ' if prior else ''}{conn.ip}\r\n")
        lines.append("X-Forwarded-Proto: http\r\n")
        host = req.get("host")
        if host is not None:
            lines.append(f"X-Forwarded-Host: {host}\r\n")
        if framing is Framing.LENGTH:
            lines.append(f"Content-Length: {length}\r\n")
        elif framing is Framing.CHUNKED:
            lines.append("Transfer-Encoding: chunked\r\n")
        elif "content-length" in req.index:
            lines.append("Content-Length: 0\r\n")
        upgrade = req.get("upgrade")
        if upgrade is not None and "upgrade" in req.connection_tokens() and req.minor >= 1:
            lines.append(f"Connection: Upgrade\r\nUpgrade: {upgrade}\r\n")
        return "".join(lines)

    def _proxy(
        self, conn: _Client, req: Head, framing: Framing, length: int, started: float, slot: _Slot
    ) -> bool:
        plan = _Plan(req, self._upstream_head(req, conn, framing, length), framing, length, started)
        if framing is Framing.LENGTH and len(conn.buf) >= length:
            plan.body = bytes(conn.buf[:length])
            del conn.buf[:length]
            plan.buffered = True
        conn.body_unread = not plan.buffered  # until streamed upstream
        for attempt in (1, 2):
            gen = self._enter()
            try:
                return self._attempt(conn, plan, slot, gen, may_retry=attempt == 1)
            except _Retry:
                continue
            finally:
                self._exit(gen)
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(
        self, conn: _Client, plan: _Plan, slot: _Slot, gen: Generation, *, may_retry: bool
    ) -> bool:
        """One try at one backend; raises _Retry when nothing reached the client yet."""
        backend, pool, req = gen.backend, gen._pool, plan.req
        head_request = req.start[0] == "HEAD"
        if backend is None or pool is None:
            self._upstream_error(ERR_NO_BACKEND)
            self._send_error(conn, 503, head_request)
            self._done(503, plan.started, gen)
            return False
        head = plan.head
        if "host" not in req.index:  # HTTP/1.0 without Host: name the backend
            head += f"Host: {backend.host}:{backend.port}\r\n"
        payload = (head + "\r\n").encode("latin-1") + plan.body
        # Resending is safe only if the whole request is still in hand and the method allows it.
        replayable = plan.buffered and req.start[0] in IDEMPOTENT

        sock = pool.acquire(check=not (replayable and may_retry))
        reused = sock is not None
        if sock is None:
            try:
                sock = pool.connect()
            except TimeoutError:
                self._upstream_error(ERR_TIMEOUT)
                self._send_error(conn, 504, head_request)
                self._done(504, plan.started, gen)
                return False
            except OSError as exc:
                self._upstream_error(ERR_CONNECT)
                if may_retry:
                    raise _Retry from exc
                log.warning("proxy cannot connect to %s: %s", backend.label, exc)
                self._send_error(conn, 502, head_request)
                self._done(502, plan.started, gen)
                return False
        slot.upstream = sock
        up = BufferedSocket(sock)
        keep_upstream = False
        try:
            try:
                sock.sendall(payload)
            except OSError as exc:
                if reused and replayable and may_retry:
                    self._upstream_error(ERR_STALE)
                    raise _Retry from exc
                self._upstream_error(ERR_CLOSED)
                self._send_error(conn, 502, head_request)
                self._done(502, plan.started, gen)
                return False
            if not plan.buffered and not self._send_request_body(conn, up, plan):
                self._done(502, plan.started, gen)
                return False
            resp = self._read_response(conn, up, req, reused and replayable and may_retry)
            if isinstance(resp, int):
                self._done(resp, plan.started, gen)
                return False
            status, keep_client, keep_upstream = self._relay_response(conn, up, req, resp)
            self._done(status, plan.started, gen)
            return keep_client
        finally:
            slot.upstream = None
            if keep_upstream and not up.buf:
                pool.release(sock)
            else:
                sock.close()

    def _send_error(self, conn: _Client, status: int, head_request: bool) -> None:
        data = _error_response(status, body=not head_request, retry_after=status == 503)
        with contextlib.suppress(OSError):  # the client may be gone already
            conn.sock.sendall(data)

    def _send_request_body(self, conn: _Client, up: BufferedSocket, plan: _Plan) -> bool:
        """Stream the rest of the request body upstream; False (response sent) on failure."""
        try:
            if plan.req.get("expect") is not None and plan.req.minor >= 1 and not conn.buf:
                conn.sock.sendall(_CONTINUE)  # the upstream head is out: now ask for the body
            send = up.sock.sendall
            if plan.framing is Framing.LENGTH:
                http11.copy_length(conn, plan.length, send)
            else:
                trailers = http11.copy_chunked(
                    conn, lambda data: send(http11.chunk(data)), self.max_header_bytes
                )
                try:
                    send(http11.last_chunk(trailers))
                except OSError as exc:
                    raise SinkError(str(exc)) from exc
        except SourceError as exc:
            # The client vanished or sent a broken chunked body; tell it if it still listens.
            log.debug("proxy: bad or incomplete request body from %s: %s", conn.ip, exc)
            self._send_error(conn, 400, False)
            return False
        except SinkError:
            self._upstream_error(ERR_CLOSED)
            self._send_error(conn, 502, False)
            return False
        except OSError:  # the 100 Continue could not be sent: the client is gone
            return False
        conn.body_unread = False
        return True

    def _read_response(
        self, conn: _Client, up: BufferedSocket, req: Head, may_retry: bool
    ) -> Head | int:
        """The final response head, or the status of the error already sent to the client."""
        head_request = req.start[0] == "HEAD"
        while True:
            try:
                raw = up.read_head(self.max_header_bytes, too_big=502)
                if raw is None:
                    raise SourceError("closed")
                resp = http11.parse_response_head(raw)
            except (OSError, SourceError) as exc:
                if _is_timeout(exc):
                    self._upstream_error(ERR_TIMEOUT)
                    self._send_error(conn, 504, head_request)
                    return 504
                if may_retry and not up.buf:
                    self._upstream_error(ERR_STALE)
                    raise _Retry from exc
                self._upstream_error(ERR_CLOSED)
                self._send_error(conn, 502, head_request)
                return 502
            except HttpError as exc:
                log.warning("proxy: bad response from backend: %s", exc)
                self._upstream_error(ERR_PROTOCOL)
                self._send_error(conn, 502, head_request)
                return 502
            status = int(resp.start[1])
            if status >= 200 or status == 101:
                return resp
            may_retry = False
            if status != 100 and req.minor >= 1:  # e.g. 103 Early Hints: pass it on
                lines = [f"HTTP/1.1 {status} {resp.start[2]}\r\n"]
                lines += http11.forwarded_fields(resp)
                try:
                    conn.sock.sendall(("".join(lines) + "\r\n").encode("latin-1"))
                except OSError:
                    return status

    def _relay_response(
        self, conn: _Client, up: BufferedSocket, req: Head, resp: Head
    ) -> tuple[int, bool, bool]:
        """Send the response to the client; returns (status, keep client, keep upstream)."""
        status = int(resp.start[1])
        if status == 101:
            return status, self._upgrade(conn, up, req, resp), False
        try:
            framing, length, reusable = http11.response_framing(resp, req.start[0])
        except HttpError as exc:
            log.warning("proxy: bad response framing from backend: %s", exc)
            self._upstream_error(ERR_PROTOCOL)
            self._send_error(conn, 502, req.start[0] == "HEAD")
            return 502, False, False
        keep = req.keep_alive() and not self._closing
        chunked_out = False
        lines = [f"HTTP/1.1 {status} {resp.start[2]}\r\n"]
        lines += http11.forwarded_fields(resp)
        if framing is Framing.LENGTH:
            lines.append(f"Content-Length: {length}\r\n")
        elif framing is Framing.NONE:
            # HEAD and 304 describe the body they do not carry: keep that length.
            try:
                declared = http11.content_length(resp, 502)
            except HttpError:
                declared = None
            if declared is not None and status != 204:
                lines.append(f"Content-Length: {declared}\r\n")
        elif req.minor >= 1:
            lines.append("Transfer-Encoding: chunked\r\n")
            chunked_out = True
        else:
            keep = False  # HTTP/1.0 client, unknown length: the close ends the body
        if not keep:
            lines.append("Connection: close\r\n")
        elif req.minor == 0:
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        client = conn.sock
        try:
            if framing is Framing.LENGTH and len(up.buf) >= length:
                # The common case: the whole small body is here, one write for everything.
                client.sendall(head + up.buf[:length])
                del up.buf[:length]
            elif framing is Framing.NONE:
                client.sendall(head)
            else:
                client.sendall(head)
                if framing is Framing.LENGTH:
                    http11.copy_length(up, length, client.sendall)
                elif chunked_out:
                    write = self._chunk_writer(client)
                    if framing is Framing.CHUNKED:
                        trailers = http11.copy_chunked(up, write, self.max_header_bytes)
                    else:
                        trailers = []
                        http11.copy_until_close(up, write)
                    client.sendall(http11.last_chunk(trailers))
                elif framing is Framing.CHUNKED:
                    http11.copy_chunked(up, client.sendall, self.max_header_bytes)
                else:
                    http11.copy_until_close(up, client.sendall)
        except (OSError, SinkError):
            # The client went away mid-response: the upstream socket is mid-message, close it.
            return status, False, False
        except SourceError as exc:
            log.warning("proxy: backend failed mid-response: %s", exc)
            self._upstream_error(ERR_BODY)
            return status, False, False  # the client sees a truncated body, not a wrong one
        return status, keep, reusable

    @staticmethod
    def _chunk_writer(client: socket.socket) -> http11.Write:
        def write(data: bytes | bytearray | memoryview) -> None:
            client.sendall(http11.chunk(data))

        return write

    def _upgrade(self, conn: _Client, up: BufferedSocket, req: Head, resp: Head) -> bool:
        """Relay a 101 and tunnel bytes both ways until either side closes."""
        upgrade = req.get("upgrade")
        if upgrade is None or "upgrade" not in req.connection_tokens():
            self._upstream_error(ERR_PROTOCOL)
            self._send_error(conn, 502, False)
            return False
        lines = [f"HTTP/1.1 101 {resp.start[2]}\r\n"]
        lines += http11.forwarded_fields(resp)
        lines.append(f"Connection: Upgrade\r\nUpgrade: {resp.get('upgrade') or upgrade}\r\n\r\n")
        try:
            conn.sock.sendall("".join(lines).encode("latin-1") + bytes(up.buf))
            up.buf.clear()
            if conn.buf:
                up.sock.sendall(bytes(conn.buf))
                conn.buf.clear()
        except OSError:
            return False
        self._tunnel(conn.sock, up.sock)
        return False

    def _tunnel(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ)
            sel.register(upstream, selectors.EVENT_READ)
            while not self._closing:
                for key, _ in sel.select(0.5):
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    try:
                        data = src.recv(http11.RECV_SIZE)
                        if data:
                            peers[src].sendall(data)
                    except OSError:
                        data = b""
                    if not data:
                        return
