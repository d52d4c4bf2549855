"""Stopping the update worker's network I/O from another thread, within a second.

The update worker handles one job at a time, so a download that drips one byte every ten
seconds would keep "Roll back" and "Quit" waiting behind it. An :class:`Interrupt` lets
those commands cut in: ``request()`` counts an urgent command as waiting and shuts down
every socket the worker is reading from (a blocked ``recv`` returns at once on Linux,
macOS and Windows), and the I/O code calls ``check()`` between reads, which raises
:class:`CancelledError` while an urgent command waits. When the worker takes that command
off its queue it calls ``handled()``. Counting, rather than a flag that is cleared when an
operation starts, means a command that arrives just before a download begins still stops
it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import weakref

from trayupdater.errors import TrayUpdaterError


class CancelledError(TrayUpdaterError):
    """Network I/O was stopped on purpose (a rollback or quit was asked for)."""

    reason = "cancelled"


class Interrupt:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[str] = []  # the urgent commands not yet handled, by name
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    # --- the commanding side (any thread) ---

    def request(self, why: str) -> None:
        """An urgent command is queued: make running I/O give way to it."""
        with self._lock:
            self._waiting.append(why)
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handled(self, why: str) -> None:
        """The worker took the command named ``why`` off its queue."""
        with self._lock, contextlib.suppress(ValueError):
            self._waiting.remove(why)

    # --- the I/O side (the worker thread) ---

    @property
    def pending(self) -> bool:
        return bool(self._waiting)

    def check(self) -> None:
        """Raise CancelledError while an urgent command waits."""
        waiting = self._waiting
        if waiting:
            raise CancelledError(f"stopped for {waiting[0]}")

    def watch(self, sock: socket.socket) -> None:
        """Called as a socket is used for a request: shut it down on ``request()``."""
        with self._lock:
            self._sockets.add(sock)
            waiting = bool(self._waiting)
        if waiting:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def pause(seconds: float, interrupt: Interrupt | None) -> None:
    """Sleep ``seconds`` (a retry's back-off); CancelledError at once when interrupted."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if interrupt is not None:
            interrupt.check()
        time.sleep(min(left, 0.05))
