"""Held requests: parked with their whole request until the routing changes.

A request is held when there is no backend but one is coming (:meth:`ReverseProxy.hold`, or
the current backend died without a warm fallback), or when its backend cannot be reached
and the proxy has not yet been told why. Held requests cost no worker: the client connection
sits in the dispatcher with the request kept for replay, which watches it (a client that
goes away is forgotten at once), and serves it again when the current generation changes,
or when it is time to try an unreachable backend again. A hold ends at
the request's deadline (``hold_seconds`` after it was first held or failed) with 503 and
Retry-After (502 for a backend that stayed unreachable). The room is bounded in requests and
bytes; past either bound a request gets 503 and Retry-After at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from trayupdater import http11
from trayupdater.proxy.clients import Client, answer_and_close
from trayupdater.proxy.observer import Reporter
from trayupdater.proxy.plan import Plan
from trayupdater.proxy.poller import Poller
from trayupdater.proxy.sockets import DONTWAIT

if TYPE_CHECKING:
    from trayupdater.proxy.routing import Generation

RETRY_BACKOFF_FIRST = 0.05  # an unreachable backend is tried again after this, doubling
RETRY_BACKOFF_MAX = 1.0


class HoldRoom:
    """How many requests are held, how many bytes they keep, and the limits on both."""

    def __init__(self, hold_seconds: float, max_held: int, max_held_bytes: int) -> None:
        self.hold_seconds = hold_seconds
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self._lock = threading.Lock()
        self._count = 0
        self._bytes = 0

    @property
    def count(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        return self._bytes

    def deadline(self, plan: Plan, now: float) -> float:
        """The request's retry-and-hold deadline, set the first time it is asked for."""
        if not plan.deadline:
            plan.deadline = now + self.hold_seconds
        return plan.deadline

    def admit(self, conn: Client, plan: Plan, gen: Generation, *, status: int, retry: bool) -> bool:
        """Hold ``plan`` until the current generation is no longer ``gen`` (and, with
        ``retry``, until the next try of an unreachable backend); False when full."""
        size = len(plan.head) + len(plan.body) + len(conn.buf)
        with self._lock:
            if self._count >= self.max_held or self._bytes + size > self.max_held_bytes:
                return False
            self._count += 1
            self._bytes += size
        now = time.monotonic()
        plan.held_size = size
        plan.hold_gen = gen
        plan.hold_status = status
        plan.held_at = now
        plan.ever_held = True
        plan.retry_at = 0.0
        if retry:
            delay = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_FIRST * 2**plan.holds)
            plan.retry_at = now + delay
            plan.holds += 1
        deadline = self.deadline(plan, now)
        conn.pending = plan
        conn.held = True
        conn.deadline = min(deadline, plan.retry_at) if plan.retry_at else deadline
        return True

    def leave(self, conn: Client) -> Plan:
        """``conn`` is held no more (released, expired or gone); its plan."""
        plan = conn.pending
        assert plan is not None and conn.held
        conn.held = False
        plan.hold_gen = None
        held = time.monotonic() - plan.held_at
        plan.held_seconds += held
        if plan.body_started:  # the wait was ours: the client's body rate does not pay for it
            plan.body_started += held
        with self._lock:
            self._count -= 1
            self._bytes -= plan.held_size
        return plan


class HeldRequests:
    """The dispatcher's side of holds: watch held connections, release or answer them.

    Only the dispatcher thread calls in. ``release`` serves a connection's request again.
    """

    def __init__(
        self,
        room: HoldRoom,
        poller: Poller,
        generation: Callable[[], Generation],
        reporter: Reporter,
        release: Callable[[Client], None],
    ) -> None:
        self._room = room
        self._poller = poller
        self._generation = generation
        self._report = reporter
        self._serve = release
        self._held: dict[int, Client] = {}
        self.wake = math.inf  # the earliest deadline or retry time of a held request
        self.flushing = False  # closing: held requests are answered 503 at once
        self.stopping = False

    def __len__(self) -> int:
        return len(self._held)

    def add(self, conn: Client) -> None:
        """A request was just held (``conn.pending``): watch it."""
        plan = conn.pending
        assert plan is not None
        if self.flushing or self.stopping:
            self._expire(conn, 503, registered=False)
            return
        if plan.hold_gen is not self._generation():  # changed while it was on its way here
            self._release(conn, registered=False)
            return
        if not self._watch(conn):  # closed meanwhile
            self._forget(conn, registered=False)
            return
        self._held[conn.fd] = conn
        self.wake = min(self.wake, conn.deadline)

    def readable(self, conn: Client) -> None:
        """A held connection became readable: the client sent more, shut its write side,
        or went away."""
        try:
            data = conn.sock.recv(http11.RECV_SIZE, DONTWAIT)
        except BlockingIOError:
            data = None
        except OSError:  # reset: gone for sure
            self._forget(conn)
            return
        if data == b"":
            # EOF. A client that shut its write side after its request (``printf ... |
            # nc -N``, HTTP/1.0 scripts) waits for the answer, and a half-close looks just
            # like a close: keep the request held, and answer it as outside a hold. One
            # that left costs its hold only (hold_seconds, max_held). Not armed again: an
            # EOF stays readable.
            return
        if data:
            conn.buf += data
        if len(conn.buf) > http11.RECV_SIZE:
            # Pipelined more than a head's worth behind a held request: read no more (the
            # rest waits in the socket, served in turn once the request is), but keep it.
            # Forgetting it closed, unanswered, a client served well outside a hold.
            return
        if not self._arm(conn):
            self._forget(conn)

    def routing_changed(self) -> None:
        """Serve again every request held for another generation than the current one."""
        if self.flushing:
            for conn in list(self._held.values()):
                self._expire(conn, 503)
            return
        gen = self._generation()
        for conn in list(self._held.values()):
            plan = conn.pending
            if plan is not None and plan.hold_gen is not gen:
                self._release(conn)

    def timers(self, now: float) -> None:
        """Answer the holds past their deadline; retry the unreachable backends due."""
        wake = math.inf
        for conn in list(self._held.values()):
            plan = conn.pending
            assert plan is not None
            if now >= plan.deadline:
                self._expire(conn, plan.hold_status)
            elif plan.retry_at and now >= plan.retry_at:
                self._release(conn)
            else:
                wake = min(wake, conn.deadline)
        self.wake = wake

    def close(self) -> None:
        for conn in list(self._held.values()):
            self._expire(conn, 503)

    def _arm(self, conn: Client) -> bool:
        return self._poller.arm(conn.fd, conn.sock, conn)  # to see the client go away

    def _watch(self, conn: Client) -> bool:
        """Arm a held connection; False if it is closed. One whose body is to be streamed
        is not armed: its body waits in the socket for the backend (reading it here would
        take it for pipelining and forget the request), so its client going away is seen
        only when the hold ends."""
        plan = conn.pending
        if plan is not None and not plan.buffered:
            return conn.sock.fileno() >= 0
        return self._arm(conn)

    def _unwatch(self, conn: Client, registered: bool) -> None:
        if registered:
            self._held.pop(conn.fd, None)
            self._poller.disarm(conn.fd, conn.sock)

    def _release(self, conn: Client, *, registered: bool = True) -> None:
        """Serve it again, on whatever is current now."""
        self._unwatch(conn, registered)
        self._room.leave(conn)
        self._serve(conn)

    def _expire(self, conn: Client, status: int, *, registered: bool = True) -> None:
        self._unwatch(conn, registered)
        gen = conn.pending.hold_gen if conn.pending else None
        label = gen.backend.label if gen and gen.backend else None
        plan = self._room.leave(conn)
        answer_and_close(conn, status)
        self._report.done(status, plan.started, label)
        self._report.hold_finished(plan.held_seconds, False)
        limit = f"{self._room.hold_seconds:g} s"
        if self.flushing or self.stopping:
            self._report.hold_expired(status, "the proxy is closing")
        elif label is not None:
            self._report.hold_expired(status, f"{label} stayed unreachable for {limit}")
        else:
            self._report.hold_expired(status, f"no backend within {limit}")

    def _forget(self, conn: Client, *, registered: bool = True) -> None:
        """The client went away while its request was held."""
        self._unwatch(conn, registered)
        plan = self._room.leave(conn)
        conn.sock.close()
        self._report.hold_finished(plan.held_seconds, False)
        self._report.hold_abandoned()
