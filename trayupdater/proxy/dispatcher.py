"""The dispatcher: the one selector thread. It owns the listening socket and every connection
no worker serves, and serves every request that never has to block.

Each connection it watches is armed for one readable event (:mod:`poller`). When an idle
connection becomes readable the dispatcher starts a task (:class:`service.Task`) and runs it
(see :mod:`steps`): the request is parsed, sent on a pooled backend connection, and while the
backend answers, the task waits with that socket armed here, so the dispatcher goes on with
other connections. When the answer is readable the task resumes, the response goes out, and
the connection is armed again. A task that has to block (BLOCK) goes to the workers, which
give the connection back when they are done. With one thread doing all of the small work, no
thread hands the GIL to another between a request's steps, and under load one wait in the
poller returns many ready sockets.

At most ``max_in_flight`` requests are served at once (in the dispatcher and the workers
together), as a backend expects of a proxy: connections that become readable beyond that
wait in a backlog, in order, until a request ends. A response under way that waits for its
client to take more, or for the backend's next bytes (a stream between events), is not
counted: it waits here, costing no thread (a worker gives such a task back, see
:mod:`steps`), so slow readers and open event streams cannot lock everyone else out.

It also enforces deadlines (``header_timeout``, idle keep-alive, bodies; those of waiting
tasks are kept by :mod:`waits`), receives request bodies (:mod:`bodies`), watches held
requests (:mod:`holding`), and lingers on refused clients.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import math
import socket
import threading
import time
from collections.abc import Callable

from trayupdater.proxy import bodies, poller
from trayupdater.proxy.bodies import Bodies
from trayupdater.proxy.capacity import Room, client_capacity
from trayupdater.proxy.clients import Client, expire, linger_read
from trayupdater.proxy.forward import Forwarder
from trayupdater.proxy.holding import HeldRequests, HoldRoom
from trayupdater.proxy.observer import Reporter
from trayupdater.proxy.routing import Generation
from trayupdater.proxy.service import Service, Task
from trayupdater.proxy.sockets import SPIN_SECONDS, client_mode
from trayupdater.proxy.steps import BLOCK, LINGER, Either, Wait, Wakeup
from trayupdater.proxy.waits import Waits
from trayupdater.proxy.workers import Workers

log = logging.getLogger(__name__)

QUIET_SECONDS = 5.0  # this long without an event: the proxy is quiet (on_quiet)
ACCEPT_BATCH = 64  # accepts per wake-up, so a connection storm cannot starve the others


class Dispatcher:
    """The selector thread (see the module doc). Other threads call only the methods under
    "any thread"."""

    _LISTENER = object()
    _WAKE = object()

    def __init__(
        self,
        listener: socket.socket,
        *,
        idle_timeout: float,
        header_timeout: float,
        backend_timeout: float,
        scan_every: float,
        max_in_flight: int,
        service: Service,
        forwarder: Forwarder,
        bodies: Bodies,
        room: HoldRoom,
        generation: Callable[[], Generation],
        reporter: Reporter,
        on_failure: Callable[[], None],
        on_quiet: Callable[[], bool] = lambda: True,
    ) -> None:
        self._listener = listener
        self._service = service
        self._forwarder = forwarder
        self._bodies = bodies
        self._report = reporter
        self._idle_timeout = idle_timeout
        self._header_timeout = header_timeout
        self._scan_every = scan_every
        self._on_failure = on_failure
        self._on_quiet = on_quiet
        self._max_in_flight = max_in_flight
        self._backlog: collections.deque[Client] = collections.deque()  # readable, to serve
        self._poller = poller.make()
        self.workers = Workers(
            service, self.park, self.give_back, backend_timeout, self._request_ended
        )
        self._held = HeldRequests(room, self._poller, generation, reporter, self._start)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self._routing_changed = False
        self._incoming: collections.deque[Client] = collections.deque()
        self._parked: dict[int, Client] = {}  # armed client connections, by descriptor
        self._waits = Waits(
            self._poller,
            idle_timeout=idle_timeout,
            backend_timeout=backend_timeout,
            wake_later=self._wake_later,
        )
        self._returned: collections.deque[tuple[Task, Wait | Either]] = collections.deque()
        self._closed = False
        self._woken: collections.deque[Task] = collections.deque()  # their Wakeup fired
        self._stop_accepting = False
        self._accepting = True
        self._accept_stopped = threading.Event()
        self._stopping = False
        self._paused_until = 0.0  # accept() failed (out of descriptors): retry later
        capacity = client_capacity(max_in_flight, self._poller.select_based)
        self._room = Room(capacity, self._parked, self._poller)
        self._full = False  # no room for another connection: not accepting (capacity.py)
        self._full_logged = -math.inf  # when that (or a poll failure) was last logged

    # -- any thread ------------------------------------------------------------------------

    def park(self, conn: Client) -> None:
        """A worker is done with ``conn``: watch it again (its fields say for what)."""
        # Append before reading the flag; run() clears the flag before draining: no lost wake.
        self._incoming.append(conn)
        if not self._wake_pending:
            self._wake_pending = True
            self.wake()

    def give_back(self, task: Task, wait: Wait | Either) -> None:
        """A worker's task waits for ``wait``, which may take long: wait for it here."""
        self._returned.append((task, wait))
        if self._closed:  # the loop is gone: end it here (each entry is popped once)
            self._close_returned()
        else:
            self.wake()

    def _request_ended(self) -> None:
        """A worker finished a request and closed its connection: if connections wait for a
        turn (the backlog), or for room to be accepted (capacity.py), the loop must go round."""
        if self._backlog or self._full:
            self.wake()

    def parked_count(self) -> int:
        return len(self._parked) + len(self._incoming) + len(self._held) + len(self._backlog)

    def routing_changed(self) -> None:
        """The current generation changed: serve held requests again."""
        self._routing_changed = True
        self.wake()

    def flush_held(self) -> None:
        """Closing: answer every held request (and any held later) with 503 now."""
        self._held.flushing = True
        self.routing_changed()

    def stop_accepting(self) -> None:
        self._stop_accepting = True
        self.wake()
        self._accept_stopped.wait(2.0)

    def stop(self, workers: int) -> None:
        self._stopping = True
        self.wake()
        self.workers.stop(workers)

    def wake(self) -> None:
        """Make the loop go round (a log summary became due, a connection came back)."""
        with contextlib.suppress(OSError):  # buffer full: a wake-up is pending anyway
            self._wake_w.send(b"\0")

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        poll = self._poller
        poll.watch(self._listener, self._LISTENER)
        poll.watch(self._wake_r, self._WAKE)
        next_scan = time.monotonic() + self._scan_every
        quiet_at = math.inf  # when to call on_quiet: QUIET_SECONDS after the last event
        held = self._held
        ready: list[object] = []
        try:
            while not self._stopping:
                now = time.monotonic()
                # Nothing to watch the deadline of: no wake-up to scan.
                scan = next_scan if self._has_deadlines() else math.inf
                wake = min(scan, held.wake, self._report.summary.due, quiet_at)
                timeout = None if wake == math.inf else max(0.0, wake - now)
                ready = self._spin(timeout) if ready and self._may_spin() else []
                if not ready:
                    ready = self._poll(timeout)
                if ready:
                    quiet_at = time.monotonic() + QUIET_SECONDS
                elif time.monotonic() >= quiet_at:
                    # Workers may be serving connections they kept: then try again later.
                    quiet_at = math.inf if self._on_quiet() else quiet_at + QUIET_SECONDS
                for data in ready:
                    try:
                        if type(data) is Task:
                            self._resume(data)
                        elif type(data) is Client:
                            self._readable(data)
                        elif data is self._LISTENER:
                            self._accept()
                        else:
                            self._drain_wake()
                    except Exception:  # a bug met by one connection must not stop the proxy
                        log.exception("proxy: handling a connection failed; closing it")
                        self._drop(data)
                self._wake_pending = False
                while self._incoming:
                    self._register(self._incoming.popleft())
                while self._returned:
                    self._returned_task(*self._returned.popleft())
                while self._woken:
                    self._woken_up(self._woken.popleft())
                while self._backlog and self._in_flight() < self._max_in_flight:
                    self._run(self._service.task(self._backlog.popleft()))
                if self._routing_changed:
                    self._routing_changed = False
                    held.routing_changed()
                if time.monotonic() >= held.wake:
                    held.timers(time.monotonic())
                if time.monotonic() >= self._report.summary.due:
                    self._report.summary.flush()
                if self._full and self._room.has_room(self._open_clients(), time.monotonic()):
                    self._full = False
                    if self._accepting and not self._paused_until:
                        poll.watch(self._listener, self._LISTENER)
                if self._stop_accepting and self._accepting:
                    for task in self._waits.tunnels():  # they have no request to finish
                        self._end(task)
                    if not (self._paused_until or self._full):
                        poll.forget(self._listener)
                    self._accepting = False
                    self._accept_stopped.set()
                now = time.monotonic()
                if now >= next_scan:
                    self._expire(now)
                    next_scan = now + self._scan_every
                    if self._accepting and self._paused_until and now >= self._paused_until:
                        self._paused_until = 0.0
                        if not self._full:
                            poll.watch(self._listener, self._LISTENER)
        except Exception:
            log.exception("proxy selector thread failed")
            self._on_failure()
        finally:
            self._accept_stopped.set()
            self._close_all()

    def _poll(self, timeout: float | None) -> list[object]:
        try:
            return self._poller.poll(timeout)
        except (OSError, ValueError):  # e.g. select() past its limit: the loop must go on
            if time.monotonic() - self._full_logged >= 10:
                self._full_logged = time.monotonic()
                log.exception("proxy: waiting for events failed; trying again")
            time.sleep(0.1)
            return []

    def _drop(self, data: object) -> None:
        """Close the connection an event that failed was about."""
        if type(data) is Task:
            self._unpark(data.conn)
            self._waits.end(data)
            self._end(data)
        elif type(data) is Client:
            self._unpark(data)
            data.sock.close()

    def _unpark(self, conn: Client) -> bool:
        """Take ``conn`` off the parked ones; False if it is not there (closed to make room
        earlier in this batch: its number may be a new connection's already)."""
        if self._parked.get(conn.fd) is not conn:
            return False
        del self._parked[conn.fd]
        return True

    def _in_flight(self) -> int:
        return len(self._service.serving) - self._waits.paused()

    def _may_spin(self) -> bool:
        """Busy-poll before sleeping? Not while a worker works: it needs the GIL."""
        return len(self._service.serving) == len(self._waits)

    def _spin(self, timeout: float | None) -> list[object]:
        """Poll without sleeping for a moment (SPIN_SECONDS, at most ``timeout``): on a VM,
        waking a sleeping thread costs more than a small request, and a backend's answer or
        a client's next request usually comes within microseconds."""
        seconds = SPIN_SECONDS if timeout is None else min(SPIN_SECONDS, timeout)
        if seconds <= 0:
            return []
        clock, poll = time.perf_counter, self._poller.poll
        deadline = clock() + seconds
        while True:
            ready = poll(0)
            if ready or clock() >= deadline:
                return ready

    def _has_deadlines(self) -> bool:
        return bool(self._parked or self._waits or self._paused_until)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._parked.values() if c.deadline <= now]:
            del self._parked[conn.fd]
            self._poller.disarm(conn.fd, conn.sock)
            self._bodies.drop(conn)
            expire(conn)
        for task in self._waits.expired(now):
            self._run(task, TimeoutError("timed out"))

    def _close_all(self) -> None:
        while self._incoming:
            self._incoming.popleft().sock.close()
        while self._backlog:
            self._backlog.popleft().sock.close()
        for conn in self._parked.values():
            conn.sock.close()
        self._parked.clear()
        self._closed = True
        for task in self._waits.clear():
            self._end(task)
        self._close_returned()
        self._held.stopping = True
        self._held.close()
        self._report.summary.flush(everything=True)
        self._poller.close()
        self._wake_r.close()
        self._wake_w.close()

    def _end(self, task: Task) -> None:
        task.gen.close()  # its finally blocks give back what it holds
        self._service.done(task)
        task.conn.sock.close()

    def _close_returned(self) -> None:
        while True:
            try:
                task, _ = self._returned.popleft()
            except IndexError:
                return
            self._end(task)

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _accept(self) -> None:
        now = time.monotonic()
        for _ in range(ACCEPT_BATCH):
            if not self._room.has_room(self._open_clients(), now):
                self._poller.forget(self._listener)  # new clients wait in the backlog
                self._full = True
                self._log_full()
                return
            try:
                sock, addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE and friends: make room, or pause (no spinning)
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._room.close_longest_idle(now):
                    continue
                log.warning("proxy accept failed: %s; pausing accepts", exc)
                self._poller.forget(self._listener)
                self._paused_until = time.monotonic() + 0.1
                return
            if self._open_clients() >= self._room.capacity:
                self._room.close_longest_idle(now)  # there is one: has_room() said so
            conn = self._new_client(sock, addr)
            if conn is not None:
                self._register(conn)

    def _open_clients(self) -> int:
        return self.parked_count() + len(self._service.serving)

    def _log_full(self) -> None:
        now = time.monotonic()
        if now - self._full_logged >= 10:
            self._full_logged = now
            log.warning("proxy: %d connections open, none idle; new ones wait", self._room.capacity)

    def _new_client(self, sock: socket.socket, addr: tuple) -> Client | None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client_mode(sock, self._idle_timeout)
        except OSError:
            sock.close()
            return None
        return Client(sock, str(addr[0]), time.monotonic() + self._header_timeout)

    def _register(self, conn: Client) -> None:
        """Watch ``conn``: for its next request, the rest of its head or body, or a hold."""
        if conn.held:
            self._held.add(conn)
            return
        if self._stopping:
            conn.sock.close()
            return
        if not self._poller.arm(conn.fd, conn.sock, conn):  # closed meanwhile
            conn.sock.close()
            return
        self._parked[conn.fd] = conn

    def _readable(self, conn: Client) -> None:
        if conn.held:
            self._held.readable(conn)
            return
        if not self._unpark(conn):
            return  # a stale event of a connection closed to make room
        if conn.lingering:
            if linger_read(conn):
                self._register(conn)
        elif conn.pending is None:
            self._start(conn)
        else:
            outcome = self._bodies.receive(conn)
            if outcome == bodies.READY:
                self._start(conn)
            elif outcome == bodies.WAIT:
                self._register(conn)

    # -- running tasks ----------------------------------------------------------------------

    def _start(self, conn: Client) -> None:
        """Serve ``conn``: it is readable, or holds a request to forward (``pending``)."""
        if self._backlog or self._in_flight() >= self._max_in_flight:
            self._backlog.append(conn)  # served when a request ends, in order
            return
        self._run(self._service.task(conn))

    def _resume(self, task: Task) -> None:
        """The socket ``task`` waited for is ready."""
        if task not in self._waits:  # both sockets of a tunnel in one poll: run it once
            return
        self._waits.end(task)
        self._run(task)

    def _wake_later(self, task: Task) -> None:
        """Any thread: the Wakeup ``task`` waits for fired."""
        self._woken.append(task)
        self.wake()

    def _returned_task(self, task: Task, wait: Wait | Either) -> None:
        if self._stopping:
            self._end(task)
            return
        exc = self._waits.socket(task, wait)
        if exc is not None:
            self._run(task, exc)

    def _woken_up(self, task: Task) -> None:
        if task in self._waits and type(task.waiting) is Wakeup:
            self._resume(task)

    def _run(self, task: Task, exc: BaseException | None = None) -> None:
        """Run ``task`` until it waits for a socket, needs a worker, or is done."""
        gen, value = task.gen, None
        while True:
            try:
                step = gen.send(value) if exc is None else gen.throw(exc)
            except StopIteration as stop:
                self._service.done(task)
                if stop.value:
                    self._register(task.conn)
                return
            except Exception:
                log.exception("proxy request failed; closing that connection")
                self._service.done(task)
                task.conn.sock.close()
                return
            value = exc = None
            if step is LINGER:
                value = None  # park it: the loop polls a moment before sleeping (_spin)
            elif step is BLOCK:
                self.workers.hand(task)
                return
            elif type(step) is Wakeup:  # a turn to connect
                if self._waits.wakeup(task, step):
                    return
            else:  # a backend's answer, a Wait, an Either
                exc = self._waits.socket(task, step)
                if exc is None:
                    return
