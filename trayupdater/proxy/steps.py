"""One request code, two drivers: what serving a connection may ask of whoever runs it.

Serving a connection (:mod:`service`, :mod:`forward`, :mod:`relay`) is written once, as
generators that *yield* where a blocking proxy would wait. Two drivers run them:

- the **dispatcher** (the one selector thread, :mod:`dispatcher`) runs a request as long as
  it never has to block: a waited-for socket is armed in its poller and the generator is
  resumed when it is readable, so one thread serves every small request in flight with no
  hand-off to another thread;
- a **worker** (:mod:`workers`) runs it where it may block: it ignores the waits (its reads
  block, bounded by the sockets' kernel timeouts) and lingers for a lone kept-alive client.

What a generator yields:

- a :class:`~trayupdater.http11.BufferedSocket` (a backend connection): "I am about to read
  it: wait until it is readable". The dispatcher resumes the generator when it is, or throws
  ``TimeoutError`` into it after the backend timeout; a worker resumes at once (its read
  blocks), after a moment of busy polling when it serves the only request in flight.
- a :class:`Wait`: "wait until this socket is readable (or writable), however long it
  takes": a non-blocking connect, a client that has not taken what was sent yet, a stream's
  next bytes. The dispatcher arms the socket and resumes the generator when it is ready,
  or throws ``TimeoutError`` into it after the peer's timeout (``client_idle_timeout`` for
  the client, ``backend_timeout`` for a backend) or the Wait's own ``seconds`` (what the
  rate rule leaves a streamed upload, :mod:`bodies`). A worker waits a moment for it
  (:data:`STALL_SECONDS`) and then gives the task back to the dispatcher: a client reading
  slowly, or an event stream between events, holds no thread. Waits for a client, and for a
  backend whose response is under way, do not count against the requests in flight.
- an :class:`Either`: "wait until either of these two sockets is readable, for as long as
  it takes" (a WebSocket tunnel, :mod:`tunnel`). The dispatcher's alone: a worker gives
  the task back at once. Not counted in flight, no deadline.
- a :class:`Wakeup`: "wait until someone fires this" (a backend connection to become free,
  upstream.py). The dispatcher resumes the generator when it fires, or throws
  ``TimeoutError`` after the backend timeout; a worker waits for it the same way.
- :data:`BLOCK`: "from here on I may block" (a connect to a host name, a large or streamed
  body, a retry that waits). The dispatcher hands the generator to a worker; a
  worker goes on. Code that may block asks again after any Wait: the wait may have moved
  it to the dispatcher.
- :data:`LINGER`: "the response is out; is the client's next request coming?" The driver
  sends back what :func:`sockets.read_within` returns: True (bytes arrived), False (closed)
  or None (nothing: park the connection). A worker serving the only request in flight waits
  a moment for it (a lone client stays with its worker); otherwise, and in the dispatcher
  (whose loop busy-polls a moment before it sleeps), the connection is parked.

Sends to a client or a backend try without blocking first (:func:`send`); what does not fit
at once is sent when the socket is writable again (a Wait). So a client that stops reading
never stalls the dispatcher, and never holds a worker either.
Neither may a message that is cheap to send and dear to parse: the dispatcher walks at most
:data:`DISPATCHER_CHUNKS` chunks of one chunked body; one with more is a worker's (one
megabyte of one-byte chunks is 170,000 of them, a second of Python).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from trayupdater.proxy.sockets import DONTWAIT

T = TypeVar("T")
Steps = Generator[Any, Any, T]  # a generator of the yields above, returning T

BLOCK = "block"
LINGER = "linger"
DISPATCHER_CHUNKS = 256  # at a few microseconds each: about a millisecond of the dispatcher
# How long a worker waits for a Wait before it gives the task back to the dispatcher: a
# client on loopback that reads at all takes the next bytes well within it, so a fast
# transfer stays in its worker; a slow one costs a hand-off per wait, not a thread.
STALL_SECONDS = 0.005


class Wakeup:
    """Fired once, from any thread, for whoever waits on it (see the module doc).

    The waiter says how it wants to hear of it with :meth:`on_fire`; one that gave up
    (:meth:`cancel`) is not told, and :meth:`fire` then returns False so that the news can go
    to another waiter.
    """

    __slots__ = ("_done", "_lock", "_notify")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False  # fired or cancelled
        self._notify: Callable[[], None] | None = None

    def fire(self) -> bool:
        """True if a waiter was (or will be) told; False if it had given up."""
        with self._lock:
            if self._done:
                return False
            self._done = True
            notify = self._notify
        if notify is not None:
            notify()
        return True

    def on_fire(self, notify: Callable[[], None]) -> bool:
        """Call ``notify`` when fired; True (and no call) if it fired already."""
        with self._lock:
            if self._done:
                return True
            self._notify = notify
            return False

    def cancel(self) -> None:
        with self._lock:
            self._done = True
            self._notify = None

    def wait(self, timeout: float) -> bool:
        """Block until fired (a worker); False after ``timeout`` (it is then cancelled)."""
        fired = threading.Event()
        if self.on_fire(fired.set) or fired.wait(timeout):
            return True
        self.cancel()
        return fired.is_set()


class Wait:
    """Wait until ``sock`` is readable, or writable (``write``), as long as the peer's
    timeout allows, or ``seconds`` (see the module doc)."""

    __slots__ = ("seconds", "sock", "write")

    def __init__(
        self, sock: socket.socket, write: bool = False, seconds: float | None = None
    ) -> None:
        self.sock = sock
        self.write = write
        self.seconds = seconds


class Either:
    """Wait until either of two sockets is readable, for as long as it takes (a tunnel).
    The dispatcher's alone: a worker gives it back at once."""

    __slots__ = ("socks",)

    def __init__(self, first: socket.socket, second: socket.socket) -> None:
        self.socks = (first, second)


def send(sock: socket.socket, data: bytes | bytearray | memoryview) -> Steps[bool]:
    """Send all of ``data``: at once if it fits, else as the socket takes it (Wait for it to
    be writable in between). True if it had to wait. ``data`` is not used after a wait (a
    copy of what is left is), so it may be a buffer its thread reuses.

    Errors are those of ``send`` (OSError; TimeoutError when the peer took nothing for its
    whole timeout). Without MSG_DONTWAIT (Windows) it BLOCKs and finishes with ``sendall``:
    correct, but the dispatcher then serves nothing itself.
    """
    if not DONTWAIT:
        yield BLOCK
        sock.sendall(data)
        return False
    try:
        sent = sock.send(data, DONTWAIT)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return False
    rest = memoryview(bytes(memoryview(data)[sent:]))
    while True:
        yield Wait(sock, write=True)
        try:
            sent = sock.send(rest, DONTWAIT)
        except BlockingIOError:
            continue
        if sent == len(rest):
            return True
        rest = rest[sent:]
