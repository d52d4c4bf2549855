"""Forwarding one request: the upstream attempt, the response relay, the upgrade tunnel."""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket

from trayupdater import http11
from trayupdater.http11 import BufferedSocket, Framing, Head, HttpError, SinkError, SourceError
from trayupdater.proxy.bodies import Bodies, TooSlow
from trayupdater.proxy.clients import Client
from trayupdater.proxy.observer import (
    ERR_BODY,
    ERR_CLOSED,
    ERR_CONNECT,
    ERR_NO_BACKEND,
    ERR_PROTOCOL,
    ERR_STALE,
    ERR_TIMEOUT,
    Reporter,
)
from trayupdater.proxy.plan import Plan
from trayupdater.proxy.routing import Generation, Router
from trayupdater.proxy.sockets import error_response, is_timeout

log = logging.getLogger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# The proxy writes these itself in the upstream request.
_REQUEST_DROP = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "expect"})


class Slot:
    """What one worker is using right now, so close() can cut it loose."""

    __slots__ = ("client", "upstream")

    def __init__(self) -> None:
        self.client: socket.socket | None = None
        self.upstream: socket.socket | None = None


class _Retry(Exception):
    """The attempt reached no backend before anything was sent to the client: try again."""


def send_error(conn: Client, status: int, head_request: bool) -> None:
    """Send a proxy-made error response, if the client still listens."""
    data = error_response(status, body=not head_request, retry_after=status == 503)
    with contextlib.suppress(OSError):  # the client may be gone already
        conn.sock.sendall(data)


class Forwarder:
    """Sends one parsed request to the current backend and relays the answer."""

    def __init__(
        self, router: Router, reporter: Reporter, bodies: Bodies, max_header_bytes: int
    ) -> None:
        self._router = router
        self._report = reporter
        self._bodies = bodies
        self.max_header_bytes = max_header_bytes
        self.closing = False  # set by ReverseProxy.close(): no more keep-alive, end tunnels

    def _done(self, status: int, started: float, gen: Generation) -> None:
        self._report.done(status, started, gen.backend.label if gen.backend else None)

    def upstream_head(self, req: Head, conn: Client, framing: Framing, length: int) -> str:
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

    def plan(self, conn: Client, req: Head, framing: Framing, length: int, started: float) -> Plan:
        return Plan(req, self.upstream_head(req, conn, framing, length), framing, length, started)

    def forward(self, conn: Client, plan: Plan, slot: Slot) -> bool:
        """Proxy one request; True if the client connection stays open.

        The body is either complete in ``conn.buf`` or to be streamed (see :mod:`bodies`).
        """
        if not plan.buffered and not plan.stream and not self._take_body(conn, plan):
            return False
        conn.body_unread = not plan.buffered  # until streamed upstream
        for attempt in (1, 2):
            gen = self._router.enter()
            try:
                return self._attempt(conn, plan, slot, gen, may_retry=attempt == 1)
            except _Retry:
                continue
            finally:
                self._router.exit(gen)
        raise AssertionError("unreachable")  # pragma: no cover

    def _take_body(self, conn: Client, plan: Plan) -> bool:
        """Move a complete body from the client buffer into ``plan``; False if refused."""
        if plan.framing is Framing.LENGTH:
            plan.body = bytes(conn.buf[: plan.length])
            del conn.buf[: plan.length]
        else:  # chunked, all here: decode it and send it on as one chunk
            parts: list[bytes] = []
            try:
                trailers = http11.copy_chunked(
                    conn, lambda data: parts.append(bytes(data)), self.max_header_bytes
                )
            except (SourceError, OSError) as exc:
                log.debug("proxy: bad chunked request body from %s: %s", conn.ip, exc)
                conn.body_unread = True
                send_error(conn, 400, False)
                self._report.done(400, plan.started, None)
                return False
            data = b"".join(parts)
            plan.body = (http11.chunk(data) if data else b"") + http11.last_chunk(trailers)
        plan.buffered = True
        return True

    def _attempt(
        self, conn: Client, plan: Plan, slot: Slot, gen: Generation, *, may_retry: bool
    ) -> bool:
        """One try at one backend; raises _Retry when nothing reached the client yet."""
        backend, pool, req = gen.backend, gen.pool, plan.req
        head_request = req.start[0] == "HEAD"
        if backend is None or pool is None:
            self._report.upstream_error(ERR_NO_BACKEND)
            send_error(conn, 503, head_request)
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
                self._report.upstream_error(ERR_TIMEOUT)
                send_error(conn, 504, head_request)
                self._done(504, plan.started, gen)
                return False
            except OSError as exc:
                self._report.upstream_error(ERR_CONNECT)
                if may_retry:
                    raise _Retry from exc
                log.warning("proxy cannot connect to %s: %s", backend.label, exc)
                send_error(conn, 502, head_request)
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
                    self._report.upstream_error(ERR_STALE)
                    raise _Retry from exc
                self._report.upstream_error(ERR_CLOSED)
                send_error(conn, 502, head_request)
                self._done(502, plan.started, gen)
                return False
            if not plan.buffered:
                failed = self._send_request_body(conn, up, plan)
                if failed:
                    self._done(failed, plan.started, gen)
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

    def _send_request_body(self, conn: Client, up: BufferedSocket, plan: Plan) -> int:
        """Stream the request body upstream: 0, or the status of the error already sent."""
        try:
            self._bodies.send_continue(conn, plan)  # the upstream head is out: ask for the body
            src = self._bodies.source(conn, plan)
            send = up.sock.sendall
            if plan.framing is Framing.LENGTH:
                http11.copy_length(src, plan.length, send)
            else:
                trailers = http11.copy_chunked(
                    src, lambda data: send(http11.chunk(data)), self.max_header_bytes
                )
                try:
                    send(http11.last_chunk(trailers))
                except OSError as exc:
                    raise SinkError(str(exc)) from exc
        except SourceError as exc:
            # The client vanished, was too slow or sent a broken chunked body; tell it if it
            # still listens.
            log.debug("proxy: bad or incomplete request body from %s: %s", conn.ip, exc)
            status = 408 if isinstance(exc.__cause__, TooSlow) else 400
            send_error(conn, status, False)
            return status
        except SinkError:
            self._report.upstream_error(ERR_CLOSED)
            send_error(conn, 502, False)
            return 502
        except OSError:  # the 100 Continue could not be sent: the client is gone
            return 400
        conn.body_unread = False
        return 0

    def _read_response(
        self, conn: Client, up: BufferedSocket, req: Head, may_retry: bool
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
                if is_timeout(exc):
                    self._report.upstream_error(ERR_TIMEOUT)
                    send_error(conn, 504, head_request)
                    return 504
                if may_retry and not up.buf:
                    self._report.upstream_error(ERR_STALE)
                    raise _Retry from exc
                self._report.upstream_error(ERR_CLOSED)
                send_error(conn, 502, head_request)
                return 502
            except HttpError as exc:
                log.warning("proxy: bad response from backend: %s", exc)
                self._report.upstream_error(ERR_PROTOCOL)
                send_error(conn, 502, head_request)
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
        self, conn: Client, up: BufferedSocket, req: Head, resp: Head
    ) -> tuple[int, bool, bool]:
        """Send the response to the client; returns (status, keep client, keep upstream)."""
        status = int(resp.start[1])
        if status == 101:
            return status, self._upgrade(conn, up, req, resp), False
        try:
            framing, length, reusable = http11.response_framing(resp, req.start[0])
        except HttpError as exc:
            log.warning("proxy: bad response framing from backend: %s", exc)
            self._report.upstream_error(ERR_PROTOCOL)
            send_error(conn, 502, req.start[0] == "HEAD")
            return 502, False, False
        keep = req.keep_alive() and not self.closing
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
                    write = _chunk_writer(client)
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
            self._report.upstream_error(ERR_BODY)
            return status, False, False  # the client sees a truncated body, not a wrong one
        return status, keep, reusable

    def _upgrade(self, conn: Client, up: BufferedSocket, req: Head, resp: Head) -> bool:
        """Relay a 101 and tunnel bytes both ways until either side closes."""
        upgrade = req.get("upgrade")
        if upgrade is None or "upgrade" not in req.connection_tokens():
            self._report.upstream_error(ERR_PROTOCOL)
            send_error(conn, 502, False)
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
            while not self.closing:
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


def _chunk_writer(client: socket.socket) -> http11.Write:
    def write(data: bytes | bytearray | memoryview) -> None:
        client.sendall(http11.chunk(data))

    return write
