"""The worker threads' loop: take a ready connection, serve the requests it holds, park it."""

from __future__ import annotations

import logging
import socket
import time

from trayupdater.http11 import HttpError
from trayupdater.proxy import heads, zerocopy
from trayupdater.proxy.bodies import Bodies
from trayupdater.proxy.clients import Client, Parker
from trayupdater.proxy.forward import Forwarder, Slot
from trayupdater.proxy.observer import Reporter
from trayupdater.proxy.plan import Plan
from trayupdater.proxy.sockets import (
    LINGER_NEXT_REQUEST,
    SPIN_SECONDS,
    error_response,
    read_nowait,
    read_within,
    readable_now,
)

log = logging.getLogger(__name__)

LINGER_SECONDS = 1.0  # after an error response: keep reading so the close is not an RST


class Workers:
    """What every worker thread runs (see the package doc, "Workers")."""

    def __init__(
        self,
        parker: Parker,
        forwarder: Forwarder,
        bodies: Bodies,
        reporter: Reporter,
        *,
        max_header_bytes: int,
        header_timeout: float,
        idle_timeout: float,
    ) -> None:
        self._parker = parker
        self._forwarder = forwarder
        self._bodies = bodies
        self._report = reporter
        self._max_header_bytes = max_header_bytes
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout

    def _park(self, conn: Client) -> None:
        # Closing: still park it. Its last response promised keep-alive, so its next request
        # may be on the wire; it is served (with "Connection: close") during close()'s grace.
        self._parker.park(conn)

    def run(self, slot: Slot) -> None:
        """One worker thread, until the parker hands it None."""
        parker = self._parker
        while True:
            conn = parker.next_ready()
            if conn is None:
                zerocopy.release()
                return
            slot.client = conn.sock
            try:
                self._serve(conn, slot)
            except Exception:
                log.exception("proxy worker failed; closing that connection")
                conn.sock.close()
            finally:
                slot.client = slot.upstream = None

    def _serve(self, conn: Client, slot: Slot) -> None:
        """Serve every complete request ``conn`` holds, then park or close it."""
        got: bool | None = None
        if conn.pending is None:  # the parker saw it readable
            got = read_nowait(conn)
            if got is None:  # spurious readiness: nothing to read after all
                self._park(conn)
                return
        while True:
            plan = conn.pending
            if plan is not None:  # back from the parker with its body, or from a hold
                conn.pending = None
                keep = self._forward(conn, plan, slot)
            else:
                if got is False:
                    conn.sock.close()
                    return
                end = conn.buf.find(b"\r\n\r\n")
                limit = self._max_header_bytes
                if end < 0 and len(conn.buf) <= limit:
                    # Wait for more in the selector, never in a worker (slow-loris).
                    now = time.monotonic()
                    if not conn.buf:
                        conn.mid_head = False
                        conn.deadline = now + self._idle_timeout
                    elif not conn.mid_head:
                        conn.mid_head = True
                        conn.deadline = now + self._header_timeout
                    self._park(conn)
                    return
                if end < 0 or end + 4 > limit:
                    self._reject(conn, 431, head_request=False)
                    return
                head = bytes(conn.buf[: end + 4])
                del conn.buf[: end + 4]
                keep = self._handle(conn, head, slot)
            if keep is None:
                return  # handed off: the parker owns the connection now
            if not keep:
                # Not "or closing": a response that promised keep-alive must not be followed
                # by a close the client's next request could race; close() serves that
                # request (with "Connection: close") during its grace instead.
                self._finish(conn)
                return
            conn.mid_head = False
            # A pipelined request may already be buffered; else a busy client usually sends
            # its next request within microseconds: wait a moment rather than park.
            got = True if conn.buf else self._linger_for(conn)

    def _linger_for(self, conn: Client) -> bool | None:
        """Wait a moment for ``conn`` to send more, if no other connection needs a worker:
        True if it did, False if it closed, None if it sent nothing (or no wait)."""
        if not self._parker.linger_ok():
            return None
        spin = SPIN_SECONDS if self._forwarder.idle() else 0.0
        return read_within(conn, LINGER_NEXT_REQUEST, spin)

    def _forward(self, conn: Client, plan: Plan, slot: Slot) -> bool | None:
        """Forward ``plan`` once its body is in hand (None: parked until it is)."""
        bodies = self._bodies
        lingered = False
        while not bodies.ready(conn, plan):
            # The rest of a small body usually follows the head at once: wait a moment
            # rather than park; then let the parker receive it, not a worker.
            if not lingered:
                lingered = True
                got = self._linger_for(conn)
                if got:
                    continue
                if got is False:
                    conn.sock.close()
                    return None
            try:
                bodies.begin_wait(conn, plan)
            except OSError:  # could not send "100 Continue": the client is gone
                bodies.drop(conn)
                conn.sock.close()
                return None
            conn.pending = plan
            self._park(conn)
            return None
        keep = self._forwarder.forward(conn, plan, slot)
        if keep is None:  # held: the parker keeps it until the routing changes
            self._park(conn)
        return keep

    def _reject(self, conn: Client, status: int, *, head_request: bool) -> None:
        """Send a proxy-made error and close the connection gracefully."""
        try:
            conn.sock.sendall(error_response(status, body=not head_request))
        except OSError:
            conn.sock.close()
            return
        self._linger(conn)

    def _finish(self, conn: Client) -> None:
        """Close after a response. With unread request bytes (a body the proxy refused, a
        pipelined request) a plain close would send an RST, which can destroy the response
        before the client read it: shut the write side and read the rest first."""
        if conn.buf or conn.body_unread or readable_now(conn.sock):
            self._linger(conn)
        else:
            conn.sock.close()

    def _linger(self, conn: Client) -> None:
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

    def _handle(self, conn: Client, raw: bytes, slot: Slot) -> bool | None:
        """Serve one request whose head is ``raw``: keep the connection open (True), close
        it (False), or None when it was handed off (lingering, or parked for its body)."""
        started = time.monotonic()
        try:
            request = heads.inbound(raw)
        except HttpError as exc:
            log.debug("proxy rejected a request from %s: %s", conn.ip, exc)
            self._reject(conn, exc.status, head_request=raw.lstrip(b"\r\n").startswith(b"HEAD "))
            self._report.done(exc.status, started, None)
            return None
        return self._forward(conn, self._forwarder.plan(conn, request, started), slot)
