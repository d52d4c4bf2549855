"""The way back: reading the backend's response head, relaying the response, tunnelling.

Written as generators (see :mod:`steps`): waiting for the backend's answer yields its socket,
and anything past a small response that is already here (a large body, a chunked one still
arriving, a streamed body) asks to BLOCK first; a tunnel is :mod:`tunnel`'s.
"""

from __future__ import annotations

import contextlib
import logging

from trayupdater import http11
from trayupdater.http11 import BufferedSocket, Framing, Head, HttpError, SinkError, SourceError
from trayupdater.proxy import heads, steps, streams, tunnel, zerocopy
from trayupdater.proxy.clients import Client
from trayupdater.proxy.observer import (
    ERR_BODY,
    ERR_CLOSED,
    ERR_PROTOCOL,
    ERR_STALE,
    ERR_TIMEOUT,
    Reporter,
)
from trayupdater.proxy.retry import AttemptFailed
from trayupdater.proxy.sockets import error_response, is_timeout, reason
from trayupdater.proxy.steps import BLOCK, Steps

log = logging.getLogger(__name__)

# A response body up to this size is read whole before the response goes out (see
# Relay._prefetch_body); larger ones are streamed.
PREFETCH_BYTES = http11.RECV_SIZE


def send_error(conn: Client, status: int, head_request: bool) -> Steps[None]:
    """Send a proxy-made error response, if the client still listens."""
    data = error_response(status, body=not head_request, retry_after=status == 503)
    with contextlib.suppress(OSError):  # the client may be gone already
        yield from steps.send(conn.sock, data)


class Relay:
    """Relays responses from a backend connection to a client connection."""

    def __init__(self, reporter: Reporter, max_header_bytes: int) -> None:
        self._report = reporter
        self.max_header_bytes = max_header_bytes
        self.closing = False  # set by ReverseProxy.close(): no more keep-alive, end tunnels
        self.pipes = zerocopy.Pipes()  # for splicing large bodies

    def read_response(
        self,
        conn: Client,
        up: BufferedSocket,
        req: Head,
        reused: bool,
        label: str,
    ) -> Steps[heads.Outbound | int]:
        """The final response, or the status of the error already sent to the client.

        Raises :class:`AttemptFailed` when the backend failed before anything was sent to
        the client (the request may then be tried again).
        """
        head_request = req.start[0] == "HEAD"
        passed_on = False  # an interim response (103) went to the client: no retry now
        while True:
            try:
                raw = yield from _read_head(up, self.max_header_bytes)
                if raw is None:
                    raise SourceError("closed")
                resp = heads.outbound(raw, head_request)
            except (OSError, SourceError) as exc:
                if is_timeout(exc):
                    kind, status = ERR_TIMEOUT, 504
                else:
                    # Nothing at all on a reused connection: it was stale (or the backend
                    # died); else the backend closed or reset before its answer.
                    kind = ERR_STALE if reused and not up.buf else ERR_CLOSED
                    status = 502
                self._report.upstream_error(kind)
                detail = "closed without answering" if isinstance(exc, SourceError) else reason(exc)
                if not passed_on:
                    raise AttemptFailed(kind, status, detail) from exc
                self._report.could_not_reach(label, detail)
                yield from send_error(conn, status, head_request)
                return status
            except HttpError as exc:
                self._report.bad_response(label, str(exc))
                self._report.upstream_error(ERR_PROTOCOL)
                yield from send_error(conn, 502, head_request)
                return 502
            status = resp.status
            if status >= 200 or status == 101:
                if not passed_on:
                    yield from self._prefetch_body(up, resp)
                return resp
            if status != 100 and req.minor >= 1:  # e.g. 103 Early Hints: pass it on
                lines = [f"HTTP/1.1 {status} {resp.head.start[2]}\r\n"]
                lines += http11.forwarded_fields(resp.head)
                passed_on = True
                try:
                    yield from steps.send(conn.sock, ("".join(lines) + "\r\n").encode("latin-1"))
                except OSError:
                    return status

    def _prefetch_body(self, up: BufferedSocket, resp: heads.Outbound) -> Steps[None]:
        """Read a small body whole before anything goes to the client.

        A backend that dies between its head and its body then fails an attempt that can
        still be retried, instead of a response already half sent.
        """
        length = resp.length
        if resp.framing is not Framing.LENGTH or length > PREFETCH_BYTES:
            return
        while len(up.buf) < length:
            try:
                if not (yield from _wait_and_fill(up)):
                    raise SourceError("connection closed before the end of the body")
            except (OSError, SourceError) as exc:
                if is_timeout(exc):
                    kind, status, detail = ERR_TIMEOUT, 504, "timed out in the middle of its answer"
                else:
                    kind, status = ERR_CLOSED, 502
                    detail = "closed in the middle of its answer"
                    if isinstance(exc, OSError):
                        detail = f"{reason(exc)} in the middle of its answer"
                self._report.upstream_error(kind)
                raise AttemptFailed(kind, status, detail) from exc

    def relay(
        self,
        conn: Client,
        up: BufferedSocket,
        req: Head,
        resp: heads.Outbound,
        label: str,
        keep: bool = True,
    ) -> Steps[tuple[int, bool, bool]]:
        """Send the response to the client; returns (status, keep client, keep upstream).
        ``keep=False``: the client connection closes after it, whatever the request said."""
        status = resp.status
        if status == 101:
            if not steps.DONTWAIT:
                yield BLOCK  # a worker's tunnel (tunnel.py)
            return status, (yield from self._upgrade(conn, up, req, resp.head, label)), False
        framing, length, reusable = resp.framing, resp.length, resp.reusable
        if framing is None:
            self._report.bad_response(label, resp.problem or "invalid framing")
            self._report.upstream_error(ERR_PROTOCOL)
            yield from send_error(conn, 502, req.start[0] == "HEAD")
            return 502, False, False
        keep = keep and req.keep_alive() and not self.closing
        head, keep, chunked_out = resp.client_head(req.minor, keep)
        client = conn.sock
        try:
            if framing is Framing.LENGTH and len(up.buf) >= length:
                # The common case: the whole small body is here, one write for everything.
                yield from steps.send(client, head + up.buf[:length])
                del up.buf[:length]
                return status, keep, reusable
            if framing is Framing.NONE:
                yield from steps.send(client, head)
                return status, keep, reusable
            if framing is Framing.CHUNKED:
                body = _chunked_in_hand(up, chunked_out, self.max_header_bytes)
                if body is not None:  # all here (a small chunked answer): no worker needed
                    yield from steps.send(client, head + body)
                    return status, keep, reusable
            if framing is Framing.LENGTH:  # a large body: spliced on Linux (zerocopy.py)
                yield from zerocopy.relay_length(up, length, head, client, self.pipes)
            else:
                yield BLOCK  # a chunked or streamed body: relayed as it arrives (streams.py)
                yield from streams.send_to(client, head)
                if framing is Framing.CHUNKED:
                    more = lambda: streams.fill(up)  # noqa: E731
                    max_trailer = self.max_header_bytes
                    yield from streams.relay_chunked(up, more, client, chunked_out, max_trailer)
                else:
                    yield from streams.relay_until_close(up, client, chunked_out)
        except (OSError, SinkError):
            # The client went away mid-response: the upstream socket is mid-message, close it.
            return status, False, False
        except SourceError as exc:
            self._report.cut_short(label, reason(exc.__cause__ or exc))
            self._report.upstream_error(ERR_BODY)
            return status, False, False  # the client sees a truncated body, not a wrong one
        return status, keep, reusable

    def _upgrade(
        self, conn: Client, up: BufferedSocket, req: Head, resp: Head, label: str
    ) -> Steps[bool]:
        """Relay a 101 and tunnel bytes both ways until both sides are done (tunnel.py)."""
        upgrade = req.get("upgrade")
        if upgrade is None or "upgrade" not in req.connection_tokens():
            self._report.bad_response(label, "101 to a request that asked for no upgrade")
            self._report.upstream_error(ERR_PROTOCOL)
            yield from send_error(conn, 502, False)
            return False
        lines = [f"HTTP/1.1 101 {resp.start[2]}\r\n"]
        lines += http11.forwarded_fields(resp)
        lines.append(f"Connection: Upgrade\r\nUpgrade: {resp.get('upgrade') or upgrade}\r\n\r\n")
        try:
            yield from steps.send(conn.sock, "".join(lines).encode("latin-1") + up.buf)
            up.buf.clear()
            if conn.buf:
                yield from steps.send(up.sock, bytes(conn.buf))
                conn.buf.clear()
        except OSError:
            return False
        if steps.DONTWAIT:
            yield from tunnel.both_ways(conn.sock, up.sock, lambda: self.closing)
        else:
            tunnel.blocking(conn.sock, up.sock, lambda: self.closing)
        return False


def _read_head(up: BufferedSocket, limit: int) -> Steps[bytes | None]:
    """The next message head from ``up`` (see ``BufferedSocket.read_head``), yielding the
    socket before each read that has to wait for it."""
    start = 0
    while True:
        end = up.buf.find(b"\r\n\r\n", start)
        if end >= 0:
            if end + 4 > limit:
                raise HttpError(502, f"message head larger than {limit} bytes")
            head = bytes(up.buf[: end + 4])
            del up.buf[: end + 4]
            return head
        if len(up.buf) > limit:
            raise HttpError(502, f"message head larger than {limit} bytes")
        if up.buf.find(b"\n\n", start) >= 0 or up.buf.find(b"\n\r\n", start) >= 0:
            # Ended by a bare LF: refused now (as any bare LF in a head), not with a 504
            # after backend_timeout while waiting for a CRLF CRLF that never comes.
            raise HttpError(502, "a message head ended by a bare LF")
        start = max(0, len(up.buf) - 3)
        had = bool(up.buf)
        if not (yield from _wait_and_fill(up)):
            if had:
                raise SourceError("connection closed in the middle of a message head")
            return None


def _wait_and_fill(up: BufferedSocket) -> Steps[bool]:
    """Yield ``up`` to the driver (which may read into it while it waits, see steps.py), then
    read what came unless the driver did; False at EOF."""
    had = len(up.buf)
    yield up
    return len(up.buf) > had or up.fill()


def _chunked_in_hand(up: BufferedSocket, chunked_out: bool, max_trailer_bytes: int) -> bytes | None:
    """The client's bytes for a chunked body that is all in ``up.buf`` already (one chunk
    and the last chunk, or the bare data for a client that cannot take chunks); None when
    more must come or it is malformed: the worker's relay then streams it, or reports it,
    as for any chunked body."""
    try:
        if not http11.scan_chunked(up.buf, 0, max_trailer_bytes, steps.DISPATCHER_CHUNKS)[1]:
            return None  # not all here, or more chunks than the dispatcher walks
        # Decoded from a copy that reads nothing: a refusal consumes nothing, and a
        # disagreement with the scan can never block the dispatcher on the socket.
        whole = http11.decode_in_hand(up, max_trailer_bytes)
    except SourceError:
        return None
    if whole is None:
        return None
    return http11.rechunked(*whole) if chunked_out else whole[0]
