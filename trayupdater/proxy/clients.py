"""Client connections and the parker: the one selector thread that owns every idle socket."""

from __future__ import annotations

import collections
import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue

from trayupdater import http11
from trayupdater.http11 import BufferedSocket
from trayupdater.proxy import bodies
from trayupdater.proxy.bodies import Bodies
from trayupdater.proxy.plan import Plan
from trayupdater.proxy.sockets import blocking_with_timeouts, error_response

log = logging.getLogger(__name__)


class Client(BufferedSocket):
    """A client connection: its socket, unread bytes, and parking state."""

    __slots__ = ("body_unread", "deadline", "ip", "lingering", "mid_head", "pending")

    def __init__(self, sock: socket.socket, ip: str, deadline: float) -> None:
        super().__init__(sock)
        self.ip = ip
        self.deadline = deadline  # when the parker gives up on it
        self.mid_head = True  # waiting for a head (a new connection counts): header_timeout
        self.lingering = False  # error sent and write side shut: read and discard until EOF
        self.body_unread = False  # the last request's body was not read to its end
        # A request whose head was read: parked while the parker receives its body.
        self.pending: Plan | None = None


def _expire(conn: Client) -> None:
    """Close a parked connection whose deadline passed, never blocking the calling thread."""
    with contextlib.suppress(OSError):
        conn.sock.setblocking(False)
        # Take what arrived meanwhile: it decides 408 vs. silence, and unread bytes would
        # turn the close into an RST.
        while len(conn.buf) <= http11.RECV_SIZE and (data := conn.sock.recv(http11.RECV_SIZE)):
            conn.buf += data
    slow_head = conn.mid_head and conn.buf
    if not conn.lingering and (slow_head or conn.pending is not None):
        with contextlib.suppress(OSError):  # a slow-loris client or a slow body: say why
            conn.sock.send(error_response(408))
    conn.sock.close()


def _linger_read(conn: Client) -> bool:
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


class Parker:
    """The selector thread: owns the listening socket and every idle connection.

    When a parked connection becomes readable it goes on the queue, where a worker picks it
    up; one waiting for its request body is read here until the body is complete. When its
    deadline passes a connection is closed (with a 408 for a half-sent head or body).
    """

    _LISTENER = object()
    _WAKE = object()

    def __init__(
        self,
        listener: socket.socket,
        *,
        idle_timeout: float,
        header_timeout: float,
        scan_every: float,
        bodies: Bodies,
        on_failure: Callable[[], None],
    ) -> None:
        self._listener = listener
        self._bodies = bodies
        self._idle_timeout = idle_timeout
        self._header_timeout = header_timeout
        self._scan_every = scan_every
        self._on_failure = on_failure
        self._queue: SimpleQueue[Client | None] = SimpleQueue()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self._incoming: collections.deque[Client] = collections.deque()
        self._parked: dict[int, Client] = {}
        self._stop_accepting = False
        self._accepting = True
        self._accept_stopped = threading.Event()
        self._stopping = False
        self._paused_until = 0.0  # accept() failed (out of descriptors): retry later

    # -- called from workers and close() ---------------------------------------------------

    def next_ready(self) -> Client | None:
        return self._queue.get()

    def linger_ok(self) -> bool:
        return self._queue.empty()  # nobody waits for a worker: lingering costs no one

    def park(self, conn: Client) -> None:
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
                        self._bodies.drop(conn)
                        _expire(conn)
                    next_scan = now + self._scan_every
                    if self._accepting and self._paused_until and now >= self._paused_until:
                        self._paused_until = 0.0
                        self._sel.register(self._listener, selectors.EVENT_READ, self._LISTENER)
        except Exception:
            log.exception("proxy selector thread failed")
            self._on_failure()
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
            conn = self._new_client(sock, addr)
            if conn is not None:
                self._register(conn)

    def _new_client(self, sock: socket.socket, addr: tuple) -> Client | None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            blocking_with_timeouts(sock, self._idle_timeout)
        except OSError:
            sock.close()
            return None
        return Client(sock, str(addr[0]), time.monotonic() + self._header_timeout)

    def _register(self, conn: Client) -> None:
        if self._stopping:
            conn.sock.close()
            return
        try:
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError):  # closed meanwhile
            conn.sock.close()
            return
        self._parked[conn.sock.fileno()] = conn

    def _ready(self, conn: Client) -> None:
        self._parked.pop(conn.sock.fileno(), None)
        self._sel.unregister(conn.sock)
        if conn.lingering:
            if _linger_read(conn):
                self._register(conn)
        elif conn.pending is None:
            self._queue.put(conn)
        else:
            outcome = self._bodies.receive(conn)
            if outcome == bodies.READY:
                self._queue.put(conn)
            elif outcome == bodies.WAIT:
                self._register(conn)
