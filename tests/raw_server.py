"""A loopback TCP server whose connections a test handles byte by byte.

For peers that misbehave below HTTP, where ``http.server`` cannot go: answers that drip,
stop half way, reset, or are not HTTP at all. ``handle(conn)`` runs in a thread of its own
for each connection; the connection is closed when it returns, and an ``OSError`` (the
client gave up) ends it quietly.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType


class RawServer:
    def __init__(self, handle: Callable[[socket.socket], None], host: str = "127.0.0.1") -> None:
        self.handle = handle
        self.listener = socket.create_server((host, 0))
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._handle_connection, args=(conn,), daemon=True).start()

    def _handle_connection(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handle(conn)

    def close(self) -> None:
        self.listener.close()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
