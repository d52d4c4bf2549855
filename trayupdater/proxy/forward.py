"""Forwarding one request: attempts at the current backend, with retries and holds.

Generators (see :mod:`steps`): an attempt on a pooled connection with a small request never
blocks; a new connection, a streamed request body and the retry policy (which may wait for
the routing to change) ask to BLOCK first.
"""

from __future__ import annotations

import logging
import socket

from trayupdater import http11
from trayupdater.http11 import BufferedSocket, Framing, SinkError, SourceError
from trayupdater.proxy import heads, steps
from trayupdater.proxy.bodies import Bodies, TooSlow
from trayupdater.proxy.clients import Client
from trayupdater.proxy.holding import HoldRoom
from trayupdater.proxy.observer import (
    ERR_CLOSED,
    ERR_CONNECT,
    ERR_NO_BACKEND,
    ERR_STALE,
    ERR_TIMEOUT,
    Reporter,
)
from trayupdater.proxy.plan import Plan
from trayupdater.proxy.relay import Relay, send_error
from trayupdater.proxy.retry import AttemptFailed, RetryPolicy
from trayupdater.proxy.routing import Generation, Router
from trayupdater.proxy.sockets import DONTWAIT, readable_now, reason
from trayupdater.proxy.steps import BLOCK, Steps

log = logging.getLogger(__name__)

_STOPPED_READING = -1  # _send_request_body: the backend stopped taking the body

# Error kinds as words, for log lines that have no better detail.
_WORDS = {
    ERR_CONNECT: "connection refused",
    ERR_STALE: "a kept-alive connection was closed",
    ERR_CLOSED: "closed without answering",
    ERR_TIMEOUT: "timed out",
    ERR_NO_BACKEND: "no backend",
}


class Slot:
    """What one worker is using right now, so close() and backend_down() can cut it loose."""

    __slots__ = ("attempt", "client", "responding", "upstream")

    def __init__(self) -> None:
        self.client: socket.socket | None = None
        self.upstream: socket.socket | None = None
        # The upstream socket and its generation, set together (one assignment).
        self.attempt: tuple[socket.socket, Generation] | None = None
        self.responding = False  # the response is being relayed: too late to retry


class Forwarder:
    """Sends one parsed request to the current backend and relays the answer."""

    def __init__(
        self,
        router: Router,
        reporter: Reporter,
        bodies: Bodies,
        room: HoldRoom,
        max_header_bytes: int,
    ) -> None:
        self._router = router
        self._report = reporter
        self._bodies = bodies
        self._room = room
        self._policy = RetryPolicy(router, room)
        self.relay = Relay(reporter, max_header_bytes)
        self.max_header_bytes = max_header_bytes

    def idle(self) -> bool:
        """No request in flight (a worker may busy-poll, see sockets.SPIN_SECONDS)."""
        return self._router.total_in_flight == 0

    def _done(self, status: int, started: float, gen: Generation) -> None:
        self._report.done(status, started, gen.backend.label if gen.backend else None)

    def plan(self, conn: Client, request: heads.Inbound, started: float) -> Plan:
        head = request.upstream_head(conn.ip)
        return Plan(request.head, head, request.framing, request.length, started)

    def forward(self, conn: Client, plan: Plan, slot: Slot) -> Steps[bool | None]:
        """Proxy one request: True if the client connection stays open, False to close it,
        None when the request is held (``conn.pending``; the caller parks the connection).

        The body is either complete in ``conn.buf`` or to be streamed (see :mod:`bodies`).
        """
        if not plan.buffered and not plan.stream and not (yield from self._take_body(conn, plan)):
            return False
        conn.body_unread = not plan.buffered  # until streamed upstream
        if plan.failure is not None:  # back from a hold after a failed attempt: a retry
            self._report.retried(*plan.failure)
            plan.failure = None
        while True:
            gen = self._router.enter()
            try:
                keep = yield from self._attempt(conn, plan, slot, gen)
            except AttemptFailed as exc:
                failure = exc
            else:
                if plan.ever_held:
                    self._report.hold_finished(plan.held_seconds, plan.answered)
                return keep
            finally:
                self._router.exit(gen)
            yield BLOCK  # the policy may wait a moment for the routing to change
            step = self._policy.decide(plan, gen, failure)
            label = gen.backend.label if gen.backend else "no backend"
            detail = failure.detail or _WORDS.get(failure.kind, failure.kind)
            if step.retry:
                self._report.retried(failure.kind, label, detail)
                continue
            status = step.status
            if step.hold:
                if self._room.admit(conn, plan, gen, status=status, retry=step.backoff):
                    if step.backoff:
                        plan.failure = (failure.kind, label, detail)
                        self._report.held(f"{label} unreachable: {detail}")
                    else:
                        self._report.held("waiting for a backend")
                    return None
                status = 503
                self._report.hold_refused(
                    f"{self._room.max_held} requests or {self._room.max_held_bytes} bytes held"
                )
            elif gen.backend is not None and status in (502, 504):
                self._report.could_not_reach(label, detail)
            yield from send_error(conn, status, plan.method == "HEAD")
            self._done(status, plan.started, gen)
            if plan.ever_held:
                self._report.hold_finished(plan.held_seconds, False)
            return False

    def _take_body(self, conn: Client, plan: Plan) -> Steps[bool]:
        """Move a complete body from the client buffer into ``plan``; False if refused."""
        if plan.framing is Framing.LENGTH:
            plan.body = bytes(conn.buf[: plan.length])
            del conn.buf[: plan.length]
        else:  # chunked, all here: decode it and send it on as one chunk
            try:
                whole = http11.decode_in_hand(conn, self.max_header_bytes)
                if whole is None:  # the dispatcher's scan said it was all here
                    raise SourceError("connection closed inside a chunked body")
            except SourceError as exc:
                log.debug("proxy: bad chunked request body from %s: %s", conn.ip, exc)
                conn.body_unread = True
                yield from send_error(conn, 400, False)
                self._report.done(400, plan.started, None)
                return False
            plan.body = http11.rechunked(*whole)
        plan.buffered = True
        return True

    def _attempt(self, conn: Client, plan: Plan, slot: Slot, gen: Generation) -> Steps[bool]:
        """One try at one backend; AttemptFailed when nothing reached the client yet."""
        backend, pool, req = gen.backend, gen.pool, plan.req
        if backend is None or pool is None:
            self._report.upstream_error(ERR_NO_BACKEND)
            raise AttemptFailed(ERR_NO_BACKEND, 503)
        head = plan.head
        if "host" not in req.index:  # HTTP/1.0 without Host: name the backend
            head += f"Host: {backend.host}:{backend.port}\r\n"
        payload = (head + "\r\n").encode("latin-1") + plan.body
        try:
            sock, reused = yield from pool.get()
        except TimeoutError as exc:
            self._report.upstream_error(ERR_TIMEOUT)
            raise AttemptFailed(ERR_TIMEOUT, 504, "connect timed out") from exc
        except OSError as exc:
            self._report.upstream_error(ERR_CONNECT)
            raise AttemptFailed(ERR_CONNECT, 502, reason(exc)) from exc
        slot.upstream = sock
        slot.responding = False
        slot.attempt = (sock, gen)
        up = BufferedSocket(sock)
        keep_upstream = False
        try:
            try:
                yield from steps.send(sock, payload)
            except OSError as exc:
                if plan.body and _answered(sock):
                    # It answered before reading the whole (buffered) body and stopped
                    # reading it (413, as Go's MaxBytesReader): that answer is the client's,
                    # as for a streamed body, not a 502 made from the failed send.
                    slot.responding = True
                    return (yield from self._early_answer(conn, up, plan, gen))
                kind = ERR_STALE if reused else ERR_CLOSED
                self._report.upstream_error(kind)
                raise AttemptFailed(kind, 502, reason(exc)) from exc
            if not plan.buffered:
                yield BLOCK
                failed = yield from self._send_request_body(conn, up, plan)
                if failed == _STOPPED_READING:
                    slot.responding = True
                    return (yield from self._early_answer(conn, up, plan, gen))
                if failed:
                    self._done(failed, plan.started, gen)
                    return False
            resp = yield from self.relay.read_response(conn, up, req, reused, backend.label)
            if isinstance(resp, int):
                self._done(resp, plan.started, gen)
                return False
            slot.responding = True
            plan.answered = True
            status, keep_client, keep_upstream = yield from self.relay.relay(
                conn, up, req, resp, backend.label
            )
            self._done(status, plan.started, gen)
            return keep_client
        finally:
            slot.attempt = None
            slot.upstream = None
            if keep_upstream and not up.buf:
                pool.release(sock)
            else:
                sock.close()

    def _send_request_body(self, conn: Client, up: BufferedSocket, plan: Plan) -> Steps[int]:
        """Stream the request body upstream (a worker's: the sends block; the client is
        waited for without a thread): 0, or the status of the error already sent."""
        plan.consumed = True
        try:
            yield from self._bodies.send_continue(conn, plan)  # the head is out: ask for it
            yield BLOCK  # a wait for that send may have moved us; the sends upstream block
            yield from self._bodies.stream(conn, plan, up.sock)
        except SourceError as exc:
            # The client vanished, was too slow or sent a broken chunked body; tell it if it
            # still listens.
            log.debug("proxy: bad or incomplete request body from %s: %s", conn.ip, exc)
            status = 408 if isinstance(exc.__cause__, TooSlow) else 400
            yield from send_error(conn, status, False)
            return status
        except SinkError:
            return _STOPPED_READING
        except OSError:  # the 100 Continue could not be sent: the client is gone
            return 400
        conn.body_unread = False
        return 0

    def _early_answer(
        self, conn: Client, up: BufferedSocket, plan: Plan, gen: Generation
    ) -> Steps[bool]:
        """The backend stopped reading the request body: it may have answered already (413
        or 401 before reading it, as Go's ``MaxBytesReader`` does). That answer goes to the
        client, whose connection then closes (the rest of its body is unread); else 502."""
        label = gen.backend.label if gen.backend else "no backend"
        try:
            resp = yield from self.relay.read_response(conn, up, plan.req, False, label)
        except AttemptFailed as exc:  # no answer (reported as the upstream error it was)
            self._report.could_not_reach(label, exc.detail or exc.kind)
            yield from send_error(conn, exc.status, False)
            self._done(exc.status, plan.started, gen)
            return False
        if isinstance(resp, int):
            self._done(resp, plan.started, gen)
            return False
        plan.answered = True
        status, _, _ = yield from self.relay.relay(conn, up, plan.req, resp, label, keep=False)
        self._done(status, plan.started, gen)
        return False


def _answered(sock: socket.socket) -> bool:
    """Has the backend begun an answer on ``sock`` (bytes of a status line waiting)?"""
    try:
        # readable_now first: without MSG_DONTWAIT (Windows) the peek would block.
        return readable_now(sock) and sock.recv(5, socket.MSG_PEEK | DONTWAIT) == b"HTTP/"
    except OSError:  # reset with nothing left to read
        return False
