"""Client connections and the parker: the one selector thread that owns every idle socket."""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import selectors
import socket
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from typing import TYPE_CHECKING

from trayupdater import http11
from trayupdater.http11 import BufferedSocket
from trayupdater.proxy import bodies
from trayupdater.proxy.bodies import Bodies
from trayupdater.proxy.holding import HoldRoom
from trayupdater.proxy.observer import Reporter
from trayupdater.proxy.plan import Plan
from trayupdater.proxy.sockets import (
    CLIENT_RECV_SECONDS,
    blocking_with_timeouts,
    error_response,
    read_nowait,
)

if TYPE_CHECKING:
    from trayupdater.proxy.routing import Generation

log = logging.getLogger(__name__)


class Client(BufferedSocket):
    """A client connection: its socket, unread bytes, and parking state."""

    __slots__ = ("body_unread", "deadline", "held", "ip", "lingering", "mid_head", "pending")

    def __init__(self, sock: socket.socket, ip: str, deadline: float) -> None:
        super().__init__(sock)
        self.ip = ip
        self.deadline = deadline  # when the parker gives up on it
        self.mid_head = True  # waiting for a head (a new connection counts): header_timeout
        self.lingering = False  # error sent and write side shut: read and discard until EOF
        self.body_unread = False  # the last request's body was not read to its end
        # A request whose head was read: parked while the parker receives its body, or held.
        self.pending: Plan | None = None
        self.held = False  # ``pending`` waits for the routing to change (holding.py)


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


def _answer_and_close(conn: Client, status: int) -> None:
    """A proxy-made error for a held request, then close, never blocking this thread."""
    plan = conn.pending
    head_request = plan is not None and plan.method == "HEAD"
    with contextlib.suppress(OSError):
        conn.sock.setblocking(False)
        conn.sock.send(error_response(status, body=not head_request, retry_after=status == 503))
        conn.sock.shutdown(socket.SHUT_WR)
        # Read what the client still sent, so the close is not an RST that eats the answer.
        while conn.sock.recv(http11.RECV_SIZE):
            pass
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


QUIET_SECONDS = 5.0  # this long without an event: the proxy is quiet (on_quiet)


class Parker:
    """The selector thread: owns the listening socket and every idle connection.

    When a parked connection becomes readable it goes on the queue, where a worker picks it
    up; one waiting for its request body is read here until the body is complete. When its
    deadline passes a connection is closed (with a 408 for a half-sent head or body).

    Held requests (see :mod:`holding`) are kept apart: watched for the client going away,
    given back to the workers when the routing changes or an unreachable backend is due
    for another try, answered 503 (or 502) when their hold expires.
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
        room: HoldRoom,
        generation: Callable[[], Generation],
        reporter: Reporter,
        on_failure: Callable[[], None],
        on_quiet: Callable[[], bool] = lambda: True,
    ) -> None:
        self._listener = listener
        self._bodies = bodies
        self._room = room
        self._generation = generation
        self._report = reporter
        self._held: dict[int, Client] = {}
        self._held_wake = math.inf  # the earliest deadline or retry time of a held request
        self._routing_changed = False
        self._flushing = False  # closing: held requests are answered 503 at once
        self._idle_timeout = idle_timeout
        self._header_timeout = header_timeout
        self._scan_every = scan_every
        self._on_failure = on_failure
        self._on_quiet = on_quiet
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
            self.wake()

    def parked_count(self) -> int:
        return len(self._parked) + len(self._incoming)

    def routing_changed(self) -> None:
        """Any thread: the current generation changed; give held requests back."""
        self._routing_changed = True
        self.wake()

    def flush_held(self) -> None:
        """Closing: answer every held request (and any held later) with 503 now."""
        self._flushing = True
        self.routing_changed()

    def stop_accepting(self) -> None:
        self._stop_accepting = True
        self.wake()
        self._accept_stopped.wait(2.0)

    def stop(self, workers: int) -> None:
        self._stopping = True
        self.wake()
        for _ in range(workers):
            self._queue.put(None)

    def wake(self) -> None:
        """Any thread: make the selector loop go round (e.g. a log summary became due)."""
        with contextlib.suppress(OSError):  # buffer full: a wake-up is pending anyway
            self._wake_w.send(b"\0")

    # -- the selector thread ---------------------------------------------------------------

    def run(self) -> None:
        self._sel.register(self._listener, selectors.EVENT_READ, self._LISTENER)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._WAKE)
        next_scan = time.monotonic() + self._scan_every
        quiet_at = math.inf  # when to call on_quiet: QUIET_SECONDS after the last event
        try:
            while not self._stopping:
                now = time.monotonic()
                # Nothing parked (and accepting): no deadline to watch, so no wake-up to scan.
                scan = next_scan if self._parked or self._paused_until else math.inf
                wake = min(scan, self._held_wake, self._report.summary.due, quiet_at)
                timeout = None if wake == math.inf else max(0.0, wake - now)
                events = self._sel.select(timeout)
                if events:
                    quiet_at = time.monotonic() + QUIET_SECONDS
                elif time.monotonic() >= quiet_at:
                    # Workers may be serving connections they kept: then try again later.
                    quiet_at = math.inf if self._on_quiet() else quiet_at + QUIET_SECONDS
                for key, _ in events:
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
                if self._routing_changed:
                    self._routing_changed = False
                    self._release_changed()
                if time.monotonic() >= self._held_wake:
                    self._held_timers(time.monotonic())
                if time.monotonic() >= self._report.summary.due:
                    self._report.summary.flush()
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
            for conn in list(self._held.values()):
                self._expire_held(conn, 503)
            self._report.summary.flush(everything=True)
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
            # A blocking read of a client only ever waits for a kept-alive client's next
            # request (read_within); every other read is of data known to be there.
            blocking_with_timeouts(sock, self._idle_timeout, CLIENT_RECV_SECONDS)
        except OSError:
            sock.close()
            return None
        return Client(sock, str(addr[0]), time.monotonic() + self._header_timeout)

    def _register(self, conn: Client) -> None:
        if conn.held:
            self._register_held(conn)
            return
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
        if conn.held:
            self._held_readable(conn)
            return
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

    # -- held requests -----------------------------------------------------------------

    def _register_held(self, conn: Client) -> None:
        plan = conn.pending
        assert plan is not None
        if self._flushing or self._stopping:
            self._expire_held(conn, 503, registered=False)
            return
        if plan.hold_gen is not self._generation():  # changed while it was on its way here
            self._release(conn, registered=False)
            return
        try:
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)  # to see it go away
        except (OSError, ValueError):  # closed meanwhile
            self._forget_held(conn, registered=False)
            return
        self._held[conn.sock.fileno()] = conn
        self._held_wake = min(self._held_wake, conn.deadline)

    def _held_readable(self, conn: Client) -> None:
        got = read_nowait(conn)
        if got is None:
            return
        # Gone, or pipelining more than a head's worth behind a held request: forget it.
        if got is False or len(conn.buf) > http11.RECV_SIZE:
            self._forget_held(conn)

    def _release_changed(self) -> None:
        if self._flushing:
            for conn in list(self._held.values()):
                self._expire_held(conn, 503)
            return
        gen = self._generation()
        for conn in list(self._held.values()):
            plan = conn.pending
            if plan is not None and plan.hold_gen is not gen:
                self._release(conn)

    def _held_timers(self, now: float) -> None:
        wake = math.inf
        for conn in list(self._held.values()):
            plan = conn.pending
            assert plan is not None
            if now >= plan.deadline:
                self._expire_held(conn, plan.hold_status)
            elif plan.retry_at and now >= plan.retry_at:
                self._release(conn)
            else:
                wake = min(wake, conn.deadline)
        self._held_wake = wake

    def _unregister_held(self, conn: Client, registered: bool) -> None:
        if registered:
            self._held.pop(conn.sock.fileno(), None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)

    def _release(self, conn: Client, *, registered: bool = True) -> None:
        """Back to the workers, to be tried on whatever is current now."""
        self._unregister_held(conn, registered)
        self._room.leave(conn)
        self._queue.put(conn)

    def _expire_held(self, conn: Client, status: int, *, registered: bool = True) -> None:
        self._unregister_held(conn, registered)
        gen = conn.pending.hold_gen if conn.pending else None
        label = gen.backend.label if gen and gen.backend else None
        plan = self._room.leave(conn)
        _answer_and_close(conn, status)
        self._report.done(status, plan.started, label)
        self._report.hold_finished(plan.held_seconds, False)
        limit = f"{self._room.hold_seconds:g} s"
        if self._flushing or self._stopping:
            self._report.hold_expired(status, "the proxy is closing")
        elif label is not None:
            self._report.hold_expired(status, f"{label} stayed unreachable for {limit}")
        else:
            self._report.hold_expired(status, f"no backend within {limit}")

    def _forget_held(self, conn: Client, *, registered: bool = True) -> None:
        """The client went away while its request was held."""
        self._unregister_held(conn, registered)
        plan = self._room.leave(conn)
        conn.sock.close()
        self._report.hold_finished(plan.held_seconds, False)
        self._report.hold_abandoned()
