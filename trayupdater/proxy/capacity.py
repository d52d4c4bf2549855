"""How many client connections the proxy keeps open, and what happens at the limit.

Every client connection is a descriptor, and so is each backend connection and each splice
pipe. At the process's descriptor limit ``accept()`` fails (EMFILE) and no new client gets
in: a thousand idle connections, which any local program can open, locked everyone out (the
usual desktop soft limit is 1024). Under ``select()`` (Windows) more than 512 sockets cannot
be watched at all. So:

- At start the soft ``RLIMIT_NOFILE`` is raised towards the hard limit (as Go's runtime
  does), as far as :data:`MAX_CLIENTS` needs.
- At most :func:`client_capacity` client connections are kept: the descriptor limit less a
  reserve for the requests in flight (a backend connection and a pipe pair each), capped by
  :data:`MAX_CLIENTS`, or :data:`SELECT_CLIENTS` under ``select()``.
- A new connection at the limit closes the one that has been idle longest (a keep-alive
  client reconnects when it needs to, as after any server's idle timeout; a connection
  silent since it was opened counts after :data:`SILENT_GRACE`). None with a request under
  way, or part of one, is taken. With none idle, the proxy stops accepting until there is
  room: new clients wait in the kernel's backlog, they are not refused.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from trayupdater.proxy.sockets import readable_now

if TYPE_CHECKING:
    from trayupdater.proxy.clients import Client
    from trayupdater.proxy.poller import Poller

try:
    import resource
except ImportError:  # Windows: no descriptor limit to raise (the select() cap applies)
    resource = None  # type: ignore[assignment]

MAX_CLIENTS = 10_000  # about 1 KiB of Python each while idle: 10 MiB at most
SELECT_CLIENTS = 400  # select() watches at most 512 sockets on Windows (FD_SETSIZE)
RESERVED = 128  # descriptors the rest of the app may need (logs, the control API, children)
PER_REQUEST = 3  # a backend connection and a splice pipe per request in flight
IDLE_SCAN = 256  # parked connections looked at for an idle one to close
SILENT_GRACE = 1.0  # seconds a new connection may stay silent before it counts as idle


def reserve(max_in_flight: int) -> int:
    return RESERVED + PER_REQUEST * max_in_flight


def raise_descriptor_limit(max_in_flight: int) -> None:
    """Raise the soft descriptor limit towards the hard one, as far as the proxy can use."""
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CLIENTS + reserve(max_in_flight)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    with contextlib.suppress(OSError, ValueError):  # e.g. macOS caps it below its hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def client_capacity(max_in_flight: int, select_based: bool) -> int:
    """How many client connections to keep open at once (see the module doc)."""
    if select_based:
        return SELECT_CLIENTS
    if resource is None:
        return MAX_CLIENTS
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CLIENTS
    return max(16, min(MAX_CLIENTS, soft - reserve(max_in_flight)))


class Room:
    """The dispatcher's side: is there room for one more client connection, and which idle
    one gives it up (see the module doc). Only the dispatcher thread calls in."""

    def __init__(self, capacity: int, parked: dict[int, Client], poller: Poller) -> None:
        self.capacity = capacity
        self._parked = parked  # the dispatcher's: the longest parked come first
        self._poller = poller

    def has_room(self, open_clients: int, now: float) -> bool:
        return open_clients < self.capacity or self._idle(now) is not None

    def close_longest_idle(self, now: float) -> bool:
        """Close the connection idle longest; False if none is idle."""
        conn = self._idle(now)
        if conn is None:
            return False
        del self._parked[conn.fd]
        self._poller.disarm(conn.fd, conn.sock)
        conn.sock.close()
        return True

    def _idle(self, now: float) -> Client | None:
        for scanned, conn in enumerate(self._parked.values()):
            if scanned >= IDLE_SCAN:
                return None
            if conn.pending is not None or conn.lingering or conn.buf or readable_now(conn.sock):
                continue  # a request under way, or part of one (maybe not read yet)
            # Kept alive after an answer, or connected a while ago without a word yet (a
            # new client has the moment it needs to send its request).
            if not conn.mid_head or now - conn.idle_since >= SILENT_GRACE:
                return conn
        return None
