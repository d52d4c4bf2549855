"""The standard library's threading HTTP server, for clients that hang up.

``socketserver`` prints a traceback on stderr for every exception a handler raises,
including a client closing its connection mid-answer. For our in-process servers (the
release feed behind the demo, the control endpoint) that is normal: the app cancels a check
when it quits, a CLI gives up after its timeout. On a user's terminal such a traceback looks
like a crash, so a hang-up is logged at debug level and anything else goes to the log with
its traceback instead of to stderr.

``serve()`` and ``stop()`` replace ``serve_forever()`` and ``shutdown()``: the standard pair
polls every ``poll_interval`` to notice a shutdown (ten wake-ups a second at 0.1 s, most of
an idle app's CPU), while ``stop()`` wakes the loop with a connection of its own.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from http.server import ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

# A client gone mid-answer: reset, broken pipe, aborted, or a socket timeout while writing.
_HANG_UPS = (ConnectionError, TimeoutError)
IDLE_POLL_SECONDS = 3600.0  # serve()'s loop wakes for stop()'s connection, not on a timer


class ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block exit

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, _HANG_UPS):
            log.debug("client %s hung up: %s", client_address, error)
        else:
            log.error("request from %s failed", client_address, exc_info=True)

    def serve(self) -> None:
        """Serve until :meth:`stop` (no polling while idle)."""
        self.serve_forever(IDLE_POLL_SECONDS)

    def stop(self) -> None:
        """Stop :meth:`serve` and wait until it returned.

        ``shutdown()`` sets the flag the loop checks after each wake-up; a connection to the
        server is that wake-up. It is repeated until the loop is done: the first one may be
        taken before the flag is set.
        """
        waiter = threading.Thread(target=self.shutdown, name="stop-server", daemon=True)
        waiter.start()
        host, port = self.server_address[:2]
        while waiter.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection((host, port), timeout=1.0).close()
            waiter.join(0.05)
