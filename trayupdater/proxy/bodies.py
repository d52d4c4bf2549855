"""Request bodies: received by the dispatcher before a worker is spent on them, or streamed as
they arrive, at a minimum rate.

A client may send its body as slowly as TCP allows, and a worker blocked on it is lost to
every other client (80 clients trickling ``Content-Length: 1000000`` took all 64 workers).
So a body of up to ``max_body`` bytes is read by the dispatcher, without blocking, until it is
complete; only then does a worker take the request. A body in hand also makes the request
replayable on another backend. A body past that cap, one arriving while the bodies
buffered across all connections pass ``max_total`` bytes, or a chunked one of more chunks
than the dispatcher walks (``steps.DISPATCHER_CHUNKS``: a client sending a megabyte of
one-byte chunks stalled every other client for most of a second) is streamed upstream as it
arrives: a worker sends it on, and between the client's bytes the task waits in the
dispatcher (a ``steps.Wait``), so a client sending a large body at a crawl holds no thread
either (with 2 workers, 4 such uploads used to lock every other client out).

Either way the client is held to one rule (as Apache's mod_reqtimeout ``body=T,MinRate=R``):
no pause longer than ``timeout`` between two reads, and on average ``min_rate`` bytes/s after
a grace of ``timeout``. A client below it gets 408 and is closed.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

from trayupdater import http11
from trayupdater.http11 import Framing, SourceError
from trayupdater.proxy import steps, streams
from trayupdater.proxy.plan import Plan
from trayupdater.proxy.sockets import DONTWAIT, read_nowait, reason
from trayupdater.proxy.steps import BLOCK, DISPATCHER_CHUNKS, Steps, Wait

if TYPE_CHECKING:
    from trayupdater.proxy.clients import Client

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# What the dispatcher does with a connection after reading some of its body.
WAIT = "wait"  # not complete: keep it parked
READY = "ready"  # complete, or to be streamed: hand it to a worker
GONE = "gone"  # the client closed: it was closed and forgotten


class TooSlow(TimeoutError):
    """The client sent its request body below the minimum rate."""


class _Pace:
    """The rate rule for one streamed body, and the waits for the client it allows."""

    def __init__(self, rules: Bodies, received: int, waited: float) -> None:
        self._rules = rules
        self._received = received
        self._waited = waited  # seconds spent waiting for this client's body so far

    def read(self, sock: socket.socket, size: int) -> Steps[bytes]:
        """The client's next bytes (b"" at EOF), waited for without a thread (a Wait, see
        steps.py). SourceError when the client fails; its cause is TooSlow when it broke the
        rule."""
        rules, ready = self._rules, False
        while True:
            if DONTWAIT or ready:  # without MSG_DONTWAIT (Windows) a read blocks: once readable
                try:
                    data = sock.recv(size, DONTWAIT)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise SourceError(f"reading a request body: {reason(exc)}") from exc
                else:
                    self._received += len(data)
                    return data
            limit = min(rules.timeout, rules.allowance(self._received) - self._waited)
            too_slow = TooSlow(f"request body slower than {rules.min_rate:g} bytes/s")
            if limit <= 0:
                raise SourceError(str(too_slow)) from too_slow
            started = time.monotonic()
            try:
                yield Wait(sock, seconds=limit)
            except TimeoutError:
                raise SourceError(str(too_slow)) from too_slow
            self._waited += time.monotonic() - started
            ready = True
            yield BLOCK  # the decoding and copying that follow are a worker's

    def fill(self, conn: Client) -> Steps[bool]:
        """The client's next bytes into ``conn.buf``; False at EOF."""
        data = yield from self.read(conn.sock, http11.RECV_SIZE)
        conn.buf += data
        return bool(data)


class Bodies:
    """The body policy and the budget of bytes buffered across all connections."""

    def __init__(
        self, *, max_body: int, max_total: int, timeout: float, min_rate: float, max_trailer: int
    ) -> None:
        self.max_body = max_body
        self.max_total = max_total
        self.timeout = timeout
        self.min_rate = min_rate
        self._max_trailer = max_trailer
        self._lock = threading.Lock()
        self._total = 0

    @property
    def buffered_bytes(self) -> int:
        return self._total

    def allowance(self, received: int) -> float:
        """Seconds a client may have spent sending ``received`` body bytes."""
        return self.timeout + received / self.min_rate

    # -- worker side -------------------------------------------------------------------

    def ready(self, conn: Client, plan: Plan) -> bool:
        """Can a worker forward ``plan`` now? False: the dispatcher should receive its body.

        True either because the body is complete in ``conn.buf`` or because it is to be
        streamed (``plan.stream``). A worker calling this takes the body out of the budget.
        """
        self._account(plan, 0)
        return self._complete_or_stream(conn, plan)

    def begin_wait(self, conn: Client, plan: Plan) -> None:
        """Before the body is left to the dispatcher: count it, set the deadline. (The caller
        asked for it first: :meth:`wants_continue`.)"""
        now = time.monotonic()
        if not plan.body_started:
            plan.body_started = now
        self._account(plan, len(conn.buf))
        conn.deadline = self._deadline(plan, len(conn.buf), now)

    def stream(self, conn: Client, plan: Plan, upstream: socket.socket) -> Steps[None]:
        """Pass the body of ``plan`` upstream as the client sends it (``conn.buf`` first; a
        chunked one re-chunked), waiting for either side without a thread, the client held
        to the rate rule. SourceError when the client fails (its cause TooSlow if it was too
        slow), SinkError when the backend does."""
        waited = time.monotonic() - plan.body_started if plan.body_started else 0.0
        pace = _Pace(self, len(conn.buf), waited)
        if plan.framing is not Framing.LENGTH:
            more = lambda: pace.fill(conn)  # noqa: E731
            yield from streams.relay_chunked(conn, more, upstream, True, self._max_trailer)
            return
        remaining = plan.length
        while remaining:
            if conn.buf:
                take = min(remaining, len(conn.buf))
                data = bytes(conn.buf[:take])
                del conn.buf[:take]
            else:  # straight from the socket, never past the body
                data = yield from pace.read(conn.sock, min(remaining, http11.RECV_SIZE))
                if not data:
                    raise SourceError("connection closed before the end of the body")
            remaining -= len(data)
            yield from streams.send_to(upstream, data)

    def wants_continue(self, conn: Client, plan: Plan) -> bool:
        """Must the client be asked for its body ("100 Continue") now? True once: the caller
        sends :data:`CONTINUE`."""
        if not plan.continue_sent and not conn.buf and _expects_continue(plan):
            plan.continue_sent = True
            return True
        return False

    def send_continue(self, conn: Client, plan: Plan) -> Steps[None]:
        """Ask the client for its body if it waits for that, once."""
        if self.wants_continue(conn, plan):
            yield from steps.send(conn.sock, CONTINUE)

    # -- dispatcher side -------------------------------------------------------------------

    def receive(self, conn: Client) -> str:
        """Read what arrived of the body of ``conn.pending``: WAIT, READY or GONE."""
        plan = conn.pending
        assert plan is not None
        got = read_nowait(conn)
        if got is None:
            return WAIT
        if got is False:
            self.drop(conn)
            conn.sock.close()
            return GONE
        self._account(plan, len(conn.buf))
        if self._complete_or_stream(conn, plan):
            return READY
        conn.deadline = self._deadline(plan, len(conn.buf), time.monotonic())
        return WAIT

    def drop(self, conn: Client) -> None:
        """The connection is being closed: its buffered body leaves the budget."""
        if conn.pending is not None:
            self._account(conn.pending, 0)

    # -- internals ---------------------------------------------------------------------

    def _complete_or_stream(self, conn: Client, plan: Plan) -> bool:
        if plan.buffered or plan.stream:
            return True
        if plan.framing is Framing.LENGTH:
            if len(conn.buf) >= plan.length:
                return True
            too_big = plan.length > self.max_body
        else:
            budget = DISPATCHER_CHUNKS - plan.chunks
            try:
                plan.chunk_scan, done, walked = http11.scan_chunked(
                    conn.buf, plan.chunk_scan, self._max_trailer, budget
                )
            except SourceError:
                done = True  # malformed: the decoder refuses it with 400 at once
            if done:
                return True
            plan.chunks += walked
            # Too many chunks to walk here: a worker decodes them as it streams the body.
            too_big = len(conn.buf) > self.max_body or walked >= budget
        # The total as it would be with every byte of this body that is here counted: a body
        # that arrived with its head must not take the total past the cap either.
        total = self._total - plan.accounted + len(conn.buf)
        if too_big or total > self.max_total:
            plan.stream = True
            return True
        return False

    def _account(self, plan: Plan, size: int) -> None:
        if size != plan.accounted:
            with self._lock:
                self._total += size - plan.accounted
            plan.accounted = size

    def _deadline(self, plan: Plan, received: int, now: float) -> float:
        return min(now + self.timeout, plan.body_started + self.allowance(received))


def _expects_continue(plan: Plan) -> bool:
    return plan.req.minor >= 1 and plan.req.get("expect") is not None
