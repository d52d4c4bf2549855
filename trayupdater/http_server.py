"""The standard library's threading HTTP server, for clients that hang up or never finish.

``socketserver`` prints a traceback on stderr for every exception a handler raises,
including a client closing its connection mid-answer. For our in-process servers (the
release feed behind the demo, the control endpoint) that is normal: the app cancels a check
when it quits, a CLI gives up after its timeout. On a user's terminal such a traceback looks
like a crash, so a hang-up is logged at debug level and anything else goes to the log with
its traceback instead of to stderr.

``serve()`` and ``stop()`` replace ``serve_forever()`` and ``shutdown()``: the standard pair
polls every ``poll_interval`` to notice a shutdown (ten wake-ups a second at 0.1 s, most of
an idle app's CPU), while ``stop()`` wakes the loop with a connection of its own. An
unexpected error in the loop is logged and serving goes on.

A server any local process can reach (the control endpoint) also needs bounds, or a client
that connects and says nothing pins a thread and a file descriptor for ever (about a
thousand of them exhaust the process's descriptors: the proxy can no longer accept):

- ``max_connections``: beyond it a connection is answered 503 at once, without reading it;
- :class:`DeadlineRequestHandler`: each request must arrive whole within
  ``request_seconds``, however slowly its bytes drip in.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import math
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

# A client gone mid-answer: reset, broken pipe, aborted, or a socket timeout while writing.
_HANG_UPS = (ConnectionError, TimeoutError)
IDLE_POLL_SECONDS = 3600.0  # serve()'s loop wakes for stop()'s connection, not on a timer
LOOP_RETRY_SECONDS = 0.5  # pause after an unexpected error in the loop, so it cannot spin
# accept() failing for want of descriptors or memory: the listening socket stays readable,
# so without a pause the loop would spin at full CPU until something is freed.
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_PAUSE_SECONDS = 0.2
_BUSY_BODY = b'{"error": "too many open connections, try again in a few seconds"}'
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block exit
    # listen() backlog: at socketserver's 5, connections beyond it during a burst wait for
    # the client's SYN retry (1 s, then 3 s) before they are even seen.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: Any,
        *,
        max_connections: int | None = None,
    ) -> None:
        super().__init__(address, handler)
        # One slot per connection being served; None: no cap (the release feed in tests).
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections) if max_connections else None
        self._stopping = False
        self._last_warning = -math.inf

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, _HANG_UPS):
            log.debug("client %s hung up: %s", client_address, error)
        else:
            log.error("request from %s failed", client_address, exc_info=True)

    # --- bounds ----------------------------------------------------------------------------

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:
                self._warn(f"cannot accept a connection ({exc.strerror or exc}); pausing")
                time.sleep(ACCEPT_PAUSE_SECONDS)
            raise  # the loop drops this attempt and goes on

    def process_request(self, request: Any, client_address: Any) -> None:
        if self._slots is not None and not self._slots.acquire(blocking=False):
            self._warn(f"more than {self.max_connections} connections at once; answering 503")
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)  # starts the handler's thread
        except BaseException:
            self._release_slot()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release_slot()

    def _release_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 and close, on the serving thread, never waiting for the client."""
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(BUSY_RESPONSE)
            # Drop what already arrived: closing a socket with unread data resets it, and
            # the client could lose the 503 before reading it.
            request.recv(65536)
        self.shutdown_request(request)

    def _warn(self, message: str) -> None:
        """Log a warning at most once a minute (a flood of connections must not flood logs)."""
        now = time.monotonic()
        if now - self._last_warning >= 60.0:
            self._last_warning = now
            log.warning("server on port %s: %s", self.server_address[1], message)

    # --- loop ------------------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until :meth:`stop` (no polling while idle), whatever the loop runs into."""
        # The first serve_forever() runs even if stop() came first: shutdown() waits for a
        # loop to end, so one must run.
        while True:
            try:
                self.serve_forever(IDLE_POLL_SECONDS)
                return  # it returns only when stop() asked it to
            except Exception:
                if self._stopping or self.fileno() < 0:
                    return  # stopped or closed under us: nothing left to serve
                log.exception("server on port %s: loop failed; serving on", self.server_address[1])
                time.sleep(LOOP_RETRY_SECONDS)
            if self._stopping:
                return

    def stop(self) -> None:
        """Stop :meth:`serve` and wait until it returned.

        ``shutdown()`` sets the flag the loop checks after each wake-up; a connection to the
        server is that wake-up. It is repeated until the loop is done: the first one may be
        taken before the flag is set.
        """
        self._stopping = True  # serve() must not start the loop again after an error
        waiter = threading.Thread(target=self.shutdown, name="stop-server", daemon=True)
        waiter.start()
        host, port = self.server_address[:2]
        while waiter.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection((host, port), timeout=1.0).close()
            waiter.join(0.05)


class _DeadlineReader(io.RawIOBase):
    """A socket's read side on which each ``recv`` waits only for what is left of
    ``deadline`` (a per-read timeout alone resets with every byte that arrives)."""

    def __init__(self, sock: socket.socket, write_timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self._write_timeout = write_timeout
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left if left != math.inf else None)
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._write_timeout)  # what the answer's writes get


class DeadlineRequestHandler(BaseHTTPRequestHandler):
    """A handler whose every request (line, headers and any body it reads) must arrive
    within ``request_seconds`` from when the handler starts waiting for it, keep-alive idle
    time included; otherwise the connection is closed. A write that stalls for as long (a
    client that does not read) ends it too."""

    request_seconds: float = 10.0

    def setup(self) -> None:
        self.timeout = self.request_seconds  # the socket timeout: bounds each write
        super().setup()
        self.rfile.close()  # replaced: reads go through the deadline
        self._reader = _DeadlineReader(self.connection, self.request_seconds)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # Armed for the next request line; the standard handler turns a TimeoutError into
        # "close the connection".
        self._reader.deadline = time.monotonic() + self.request_seconds
        super().handle_one_request()
