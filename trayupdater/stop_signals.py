"""Waiting in the main thread until SIGINT, SIGTERM or SIGHUP comes, or another thread says stop.

The kernel hands a signal sent to the process to any of its threads that does not block it:
the main thread first, but another one when the main thread has a signal pending already.
CPython runs the Python handler in the main thread only, the next time that thread runs
Python code. A main thread asleep in ``Event.wait()`` without a timeout is not woken by a
signal another thread took, so the app slept through its SIGTERM (found under load in CI).

So on POSIX the main thread sleeps in ``select`` on a pipe that ``signal.set_wakeup_fd``
makes the C-level handler write to, whichever thread ran it: the signal always wakes it,
and it wakes for nothing else (no timer, no idle CPU). :meth:`StopSignals.stop` writes to
the same pipe. Elsewhere (Windows, where the wake-up descriptor must be a socket and Ctrl+C
does not interrupt a wait) it polls twice a second.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from types import FrameType, TracebackType

# SIGHUP too (POSIX): a terminal or SSH session that closes sends it, and its default action
# killed the app on the spot: no drain, and a child ignoring its death signal orphaned.
_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())
_POLL_SECONDS = 0.5  # without a wake-up pipe


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP handled while in the ``with`` block (main thread only)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._pipe: tuple[int, int] | None = None
        self._previous: dict[int, object] = {}
        self._previous_fd = -1

    def __enter__(self) -> StopSignals:
        if os.name == "posix":
            read_end, write_end = os.pipe()
            for fd in (read_end, write_end):
                os.set_blocking(fd, False)
            self._pipe = (read_end, write_end)
            self._previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for sig in _SIGNALS:
            if sig == getattr(signal, "SIGHUP", None) and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # started with nohup: the user asked to outlive the terminal
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_fd)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def stop(self) -> None:
        """From any thread: make :meth:`wait` return."""
        self._stop.set()
        if self._pipe is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
                os.write(self._pipe[1], b"\0")

    def wait(self) -> None:
        """Until a signal or :meth:`stop` (main thread)."""
        while not self._stop.is_set():
            if self._pipe is None:
                self._stop.wait(_POLL_SECONDS)
                continue
            select.select([self._pipe[0]], [], [])
            # The C-level handler wrote the signal's number: decisive even if the Python
            # handler has not run yet (it runs when the interpreter next checks).
            with contextlib.suppress(BlockingIOError):
                while woken := os.read(self._pipe[0], 512):
                    if any(number in _SIGNALS for number in woken):
                        self._stop.set()
