"""Socket helpers shared by the proxy's parts: timeouts, readiness, proxy-made responses."""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import sys
import time

from trayupdater import http11

_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

# After a response, a worker serving the only request in flight waits this long for the
# client's next request before it gives the connection back: a hand-off to the dispatcher
# and back costs more CPU than a short wait for a busy lone client.
LINGER_NEXT_REQUEST = 0.002

DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)  # Windows lacks it; readiness is exact there
# Busy polling: a worker that is about to sleep in recv() while it serves the only request in
# flight (a lone client) first polls the socket without blocking for this long. The answer of
# a loopback backend, or a lone client's next request, usually comes within it, and a thread
# that never slept skips the wake-up (on a VM, an idle core's wake-up costs more than the
# whole request): a lone client gets its answers up to 1.6x sooner. Under concurrency nobody
# spins (it would take the GIL from the others) and idle there is nothing to spin for.
SPIN_SECONDS = 0.0002 if DONTWAIT else 0.0
_TIMEOUT_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ETIMEDOUT, 10060})


def timeval(seconds: float) -> bytes:
    """``seconds`` as SO_RCVTIMEO/SO_SNDTIMEO take it."""
    if sys.platform == "win32":
        return struct.pack("I", max(1, int(seconds * 1000)))  # DWORD milliseconds
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))  # struct timeval


def blocking_with_timeouts(
    sock: socket.socket, seconds: float, recv_seconds: float | None = None
) -> None:
    """Blocking mode with kernel send/receive timeouts (``recv_seconds``: another one for
    receiving).

    With ``settimeout()`` CPython polls before every recv/send: twice the system calls on the
    hot path. SO_RCVTIMEO/SO_SNDTIMEO bound each call without that; an expiry surfaces as an
    OSError that :func:`is_timeout` recognises.
    """
    sock.settimeout(None)
    value = timeval(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(recv_seconds or seconds))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def client_mode(sock: socket.socket, timeout: float) -> None:
    """Non-blocking where sends take MSG_DONTWAIT: every wait for a client is then explicit
    (a poll in a worker, or the dispatcher's, see steps.Wait), and a splice into a client
    that reads slowly returns instead of holding its thread. Elsewhere (Windows): blocking,
    each call bounded by ``timeout``."""
    if DONTWAIT:
        sock.setblocking(False)
    else:
        blocking_with_timeouts(sock, timeout)


def is_timeout(exc: BaseException) -> bool:
    """Did a socket call fail because a kernel timeout (or a Python one) expired?"""
    return isinstance(exc, TimeoutError) or (
        isinstance(exc, OSError) and exc.errno in _TIMEOUT_ERRNOS
    )


def wait_ready(sock: socket.socket, timeout: float, *, write: bool = False) -> bool:
    """Wait up to ``timeout`` seconds for ``sock`` to become readable (``write``: writable)."""
    if hasattr(select, "poll"):  # select() cannot take descriptors >= FD_SETSIZE
        poller = select.poll()
        poller.register(sock, select.POLLOUT if write else select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    if write:
        _, writable, failed = select.select([], [sock], [sock], timeout)
        return bool(writable or failed)
    return bool(select.select([sock], [], [], timeout)[0])


if hasattr(socket, "MSG_DONTWAIT"):

    def readable_now(sock: socket.socket) -> bool:
        """Is ``sock`` readable without waiting? For an idle pooled connection: EOF or junk."""
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

else:  # Windows

    def readable_now(sock: socket.socket) -> bool:
        """Is ``sock`` readable without waiting? For an idle pooled connection: EOF or junk."""
        return wait_ready(sock, 0)


def read_nowait(conn: http11.BufferedSocket) -> bool | None:
    """Read what a ready connection has: True if data, False on EOF/error, None if nothing."""
    try:
        data = conn.sock.recv(http11.RECV_SIZE, DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return False
    conn.buf += data
    return bool(data)


def spin_recv(sock: socket.socket, seconds: float) -> bytes | None:
    """Poll ``sock`` without blocking for up to ``seconds`` (see SPIN_SECONDS): what it
    received (b"" at EOF), or None if nothing came. Errors are raised as recv() raises them."""
    clock = time.perf_counter
    deadline = clock() + seconds
    recv = sock.recv
    while True:
        try:
            return recv(http11.RECV_SIZE, DONTWAIT)
        except BlockingIOError:
            if clock() >= deadline:
                return None


def spin_fill(conn: http11.BufferedSocket, seconds: float) -> None:
    """Busy-poll ``conn`` for its next bytes (into ``conn.buf``) before a blocking read.

    At EOF nothing is added: the blocking read that follows sees the EOF again.
    """
    data = spin_recv(conn.sock, seconds)
    if data:
        conn.buf += data


def read_within(conn: http11.BufferedSocket, seconds: float, spin: float = 0.0) -> bool | None:
    """Wait up to ``seconds`` for data: True if some was read, False on EOF, None if none.
    ``spin``: busy-poll this long first (SPIN_SECONDS): a busy client's next request usually
    comes within it, and then no thread sleeps."""
    if spin:
        try:
            data = spin_recv(conn.sock, spin)
        except OSError:
            return False
        if data is not None:
            conn.buf += data
            return bool(data)
    if not wait_ready(conn.sock, seconds):
        return None
    return read_nowait(conn)


def reason(exc: BaseException) -> str:
    """An exception as a few words for a log line: "connection refused"."""
    if is_timeout(exc):  # a kernel timeout is EAGAIN: "resource temporarily unavailable"
        return "timed out"
    text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    text = text or type(exc).__name__
    return text[:1].lower() + text[1:]


def shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def error_response(status: int, *, body: bool = True, retry_after: bool = False) -> bytes:
    """A complete proxy-made response that closes the connection."""
    reason = _REASONS.get(status, "Error")
    text = f"{status} {reason}\n".encode()
    extra = "Retry-After: 1\r\n" if retry_after else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(text)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + (text if body else b"")
