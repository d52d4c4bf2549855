"""The standard library's threading HTTP server, for clients that hang up.

``socketserver`` prints a traceback on stderr for every exception a handler raises,
including a client closing its connection mid-answer. For our in-process servers (the
release feed behind the demo, the control endpoint) that is normal: the app cancels a check
when it quits, a CLI gives up after its timeout. On a user's terminal such a traceback looks
like a crash, so a hang-up is logged at debug level and anything else goes to the log with
its traceback instead of to stderr.
"""

from __future__ import annotations

import logging
import sys
from http.server import ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

# A client gone mid-answer: reset, broken pipe, aborted, or a socket timeout while writing.
_HANG_UPS = (ConnectionError, TimeoutError)


class ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block exit

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, _HANG_UPS):
            log.debug("client %s hung up: %s", client_address, error)
        else:
            log.error("request from %s failed", client_address, exc_info=True)
