"""Client connections: their socket, unread bytes and parking state, and closing them well."""

from __future__ import annotations

import contextlib
import socket
import time

from trayupdater import http11
from trayupdater.http11 import BufferedSocket
from trayupdater.proxy.plan import Plan
from trayupdater.proxy.sockets import error_response


class Client(BufferedSocket):
    """A client connection: its socket, unread bytes, and parking state."""

    __slots__ = (
        "body_unread",
        "deadline",
        "fd",
        "held",
        "idle_since",
        "ip",
        "lingering",
        "mid_head",
        "pending",
    )

    def __init__(self, sock: socket.socket, ip: str, deadline: float) -> None:
        super().__init__(sock)
        self.fd = sock.fileno()  # kept: a closed socket's fileno() is -1
        self.ip = ip
        self.deadline = deadline  # when the dispatcher gives up on it
        # Since when it has had no request: its last answer went out (or it connected).
        self.idle_since = time.monotonic()
        self.mid_head = True  # waiting for a head (a new connection counts): header_timeout
        self.lingering = False  # error sent and write side shut: read and discard until EOF
        self.body_unread = False  # the last request's body was not read to its end
        # A request whose head was read: parked while the dispatcher receives its body, or held.
        self.pending: Plan | None = None
        self.held = False  # ``pending`` waits for the routing to change (holding.py)


def expire(conn: Client) -> None:
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


def answer_and_close(conn: Client, status: int) -> None:
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


def linger_read(conn: Client) -> bool:
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
