"""Serving one client connection: every complete request it holds, then what becomes of it.

Written as generators (see :mod:`steps`) that the dispatcher or a worker runs. :meth:`serve`
returns True when the connection is to be parked (its next request, the rest of its head, its
body, a hold, or lingering after an error; its fields say which) and False when it is closed.
"""

from __future__ import annotations

import logging
import socket
import time

from trayupdater.http11 import HttpError
from trayupdater.proxy import heads, steps
from trayupdater.proxy.bodies import CONTINUE, Bodies
from trayupdater.proxy.clients import Client
from trayupdater.proxy.forward import Forwarder, Slot
from trayupdater.proxy.observer import Reporter
from trayupdater.proxy.plan import Plan
from trayupdater.proxy.sockets import error_response, read_nowait, readable_now
from trayupdater.proxy.steps import LINGER, Steps, Wakeup

log = logging.getLogger(__name__)

LINGER_SECONDS = 1.0  # after an error response: keep reading so the close is not an RST

# What became of a connection after a request, besides True (kept open) and False (close it).
PARK = "park"  # the dispatcher keeps it: waiting for its body, held, or lingering
CLOSED = "closed"  # closed already


class Task:
    """A connection being served: the generator serving it and the slot it reports in."""

    __slots__ = ("conn", "deadline", "gen", "slot", "stalled", "waiting")

    def __init__(self, conn: Client, gen: Steps[bool], slot: Slot) -> None:
        self.conn = conn
        self.gen = gen
        self.slot = slot
        self.stalled = False  # a worker gave it back once: its peer is slow (workers.py)
        # What the dispatcher waits for: a socket, two (a tunnel), a Wakeup (waits.py).
        self.waiting: socket.socket | tuple[socket.socket, ...] | Wakeup | None = None
        self.deadline = 0.0  # and until when


class Service:
    """The per-connection logic: heads, limits, pipelining, and what to do afterwards."""

    def __init__(
        self,
        forwarder: Forwarder,
        bodies: Bodies,
        reporter: Reporter,
        *,
        max_header_bytes: int,
        header_timeout: float,
        idle_timeout: float,
    ) -> None:
        self._forwarder = forwarder
        self._bodies = bodies
        self._report = reporter
        self._max_header_bytes = max_header_bytes
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout
        # Slots of every task being served (close() and backend_down() reach them here).
        self.serving: set[Slot] = set()

    def task(self, conn: Client) -> Task:
        """A task serving ``conn``, which became readable (or holds a request to forward)."""
        slot = Slot()
        slot.client = conn.sock
        self.serving.add(slot)
        return Task(conn, self.serve(conn, slot), slot)

    def done(self, task: Task) -> None:
        self.serving.discard(task.slot)

    def serve(self, conn: Client, slot: Slot) -> Steps[bool]:
        """Serve every complete request ``conn`` holds; True: park it, False: it is closed."""
        got: bool | None = None
        if conn.pending is None:  # it became readable
            got = read_nowait(conn)
            if got is None:  # spurious readiness: nothing to read after all
                return True
        while True:
            plan = conn.pending
            if plan is not None:  # back with its body, or from a hold
                conn.pending = None
                keep = yield from self._forward(conn, plan, slot)
            else:
                if got is False:
                    conn.sock.close()
                    return False
                if conn.buf[:1] in (b"\r", b"\n") and not conn.mid_head:
                    # Empty lines before a request line are ignored (RFC 9112 2.2: some
                    # clients send a CRLF after a body); no request head has begun.
                    del conn.buf[: len(conn.buf) - len(conn.buf.lstrip(b"\r\n"))]
                end = conn.buf.find(b"\r\n\r\n")
                limit = self._max_header_bytes
                if end < 0 and (b"\n\n" in conn.buf or b"\n\r\n" in conn.buf):
                    # A head ended by a bare LF: refused now (as any bare LF in a head), not
                    # with a 408 after header_timeout while waiting for a CRLF CRLF.
                    return (yield from self._reject(conn, 400, head_request=False))
                if end < 0 and len(conn.buf) <= limit:
                    # Wait for more in the dispatcher, never in a worker (slow-loris).
                    now = time.monotonic()
                    if not conn.buf:
                        conn.mid_head = False
                        # From its last answer: empty lines (skipped above) never extend it.
                        conn.deadline = conn.idle_since + self._idle_timeout
                    elif not conn.mid_head:
                        conn.mid_head = True
                        conn.deadline = now + self._header_timeout
                    return True
                if end < 0 or end + 4 > limit:
                    return (yield from self._reject(conn, 431, head_request=False))
                head = bytes(conn.buf[: end + 4])
                del conn.buf[: end + 4]
                keep = yield from self._handle(conn, head, slot)
            if keep is PARK:
                return True
            if keep is CLOSED:
                return False
            if not keep:
                # Not "or closing": a response that promised keep-alive must not be followed
                # by a close the client's next request could race; close() serves that
                # request (with "Connection: close") during its grace instead.
                return self._finish(conn)
            conn.mid_head = False
            conn.idle_since = time.monotonic()
            # A pipelined request may already be buffered; else a busy client usually sends
            # its next request within microseconds: the driver may wait a moment for it.
            got = True if conn.buf else (yield LINGER)

    def _forward(self, conn: Client, plan: Plan, slot: Slot) -> Steps[bool | str]:
        """Forward ``plan`` once its body is in hand (PARK: the dispatcher receives it)."""
        bodies = self._bodies
        lingered = False
        while not bodies.ready(conn, plan):
            # The rest of a small body usually follows the head at once: wait a moment
            # rather than park; then let the dispatcher receive it, not a worker.
            if not lingered:
                lingered = True
                got = yield LINGER
                if got:
                    continue
                if got is False:
                    conn.sock.close()
                    return CLOSED
            try:
                if bodies.wants_continue(conn, plan):
                    yield from steps.send(conn.sock, CONTINUE)
            except OSError:  # the client is gone
                bodies.drop(conn)
                conn.sock.close()
                return CLOSED
            bodies.begin_wait(conn, plan)
            conn.pending = plan
            return PARK
        keep = yield from self._forwarder.forward(conn, plan, slot)
        return PARK if keep is None else keep  # None: held, the dispatcher keeps it

    def _reject(self, conn: Client, status: int, *, head_request: bool) -> Steps[bool]:
        """Send a proxy-made error and close the connection gracefully (True: park it to
        linger)."""
        try:
            yield from steps.send(conn.sock, error_response(status, body=not head_request))
        except OSError:
            conn.sock.close()
            return False
        return self._linger(conn)

    def _finish(self, conn: Client) -> bool:
        """Close after a response. With unread request bytes (a body the proxy refused, a
        pipelined request) a plain close would send an RST, which can destroy the response
        before the client read it: shut the write side and read the rest first."""
        if conn.buf or conn.body_unread or readable_now(conn.sock):
            return self._linger(conn)
        conn.sock.close()
        return False

    def _linger(self, conn: Client) -> bool:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            conn.sock.close()
            return False
        conn.lingering = True
        conn.buf.clear()
        conn.deadline = time.monotonic() + LINGER_SECONDS
        return True

    def _handle(self, conn: Client, raw: bytes, slot: Slot) -> Steps[bool | str]:
        """Serve one request whose head is ``raw``: keep the connection open (True), close
        it (False), PARK or CLOSED."""
        started = time.monotonic()
        try:
            request = heads.inbound(raw)
        except HttpError as exc:
            log.debug("proxy rejected a request from %s: %s", conn.ip, exc)
            head_request = raw.lstrip(b"\r\n").startswith(b"HEAD ")
            parked = yield from self._reject(conn, exc.status, head_request=head_request)
            self._report.done(exc.status, started, None)
            return PARK if parked else CLOSED
        return (yield from self._forward(conn, self._forwarder.plan(conn, request, started), slot))
