"""The tasks the dispatcher runs that wait: for a socket, two (a tunnel), or a Wakeup.

Each wait has a deadline, when the dispatcher throws TimeoutError into the task:
- a backend's answer: ``backend_timeout``;
- a Wait: the peer's timeout (``client_idle_timeout`` for the client, ``backend_timeout`` for a
  backend), or the Wait's own ``seconds``;
- an Either (a tunnel): none.

Some waits are the peer's pace rather than work, and are not counted against the requests
in flight (see :mod:`steps`): a Wait on the client, a Wait on a backend whose response is
under way, and an Either. Those are *paused*.

Only the dispatcher thread calls in.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable

from trayupdater.http11 import BufferedSocket
from trayupdater.proxy.poller import Poller
from trayupdater.proxy.service import Task
from trayupdater.proxy.steps import Either, Wait, Wakeup


class Waits:
    """The waiting tasks, their deadlines, and which of them are paused (see the module doc)."""

    def __init__(
        self,
        poller: Poller,
        *,
        idle_timeout: float,
        backend_timeout: float,
        wake_later: Callable[[Task], None],
    ) -> None:
        self._poller = poller
        self._idle_timeout = idle_timeout
        self._backend_timeout = backend_timeout
        self._wake_later = wake_later  # any thread: a Wakeup a task waits for fired
        self._waiting: set[Task] = set()
        self._paused: set[Task] = set()

    def __contains__(self, task: Task) -> bool:
        return task in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)

    def paused(self) -> int:
        return len(self._paused)

    def wakeup(self, task: Task, wakeup: Wakeup) -> bool:
        """Wait for ``wakeup`` (a turn to connect); False if it fired already."""
        if wakeup.on_fire(lambda: self._wake_later(task)):
            return False
        self._add(task, wakeup, self._backend_timeout, paused=False)
        return True

    def socket(self, task: Task, step: BufferedSocket | Wait | Either) -> OSError | None:
        """Arm what ``step`` waits for (a backend's answer, a Wait, an Either); the error to
        throw into the task if it cannot be armed."""
        if type(step) is Either:
            return self._either(task, step)
        if type(step) is Wait:
            sock, write = step.sock, step.write
            client = sock is task.conn.sock
            timeout = step.seconds
            if timeout is None:
                timeout = self._idle_timeout if client else self._backend_timeout
            paused = client or task.slot.responding
        else:
            sock, write, timeout, paused = step.sock, False, self._backend_timeout, False
        if not self._poller.arm(sock.fileno(), sock, task, write):
            return OSError("connection closed")
        self._add(task, sock, timeout, paused=paused)
        return None

    def _either(self, task: Task, step: Either) -> OSError | None:
        for i, sock in enumerate(step.socks):
            if not self._poller.arm(sock.fileno(), sock, task):
                for armed in step.socks[:i]:
                    self._poller.disarm(armed.fileno(), armed)
                return OSError("connection closed")
        self._add(task, step.socks, math.inf, paused=True)
        return None

    def _add(
        self,
        task: Task,
        waiting: socket.socket | tuple[socket.socket, ...] | Wakeup,
        timeout: float,
        *,
        paused: bool,
    ) -> None:
        task.waiting = waiting
        task.deadline = time.monotonic() + timeout
        self._waiting.add(task)
        if paused:
            self._paused.add(task)

    def end(self, task: Task) -> None:
        """Stop waiting for what ``task`` waits for (nothing to undo for a socket that just
        fired)."""
        waited = task.waiting
        if type(waited) is Wakeup:
            waited.cancel()
        elif type(waited) is tuple:
            for sock in waited:
                self._poller.disarm(sock.fileno(), sock)
        elif waited is not None:
            self._poller.disarm(waited.fileno(), waited)
        self._waiting.discard(task)
        self._paused.discard(task)
        task.waiting = None

    def expired(self, now: float) -> list[Task]:
        """The tasks whose deadline passed, no longer waiting."""
        tasks = [t for t in self._waiting if t.deadline <= now]
        for task in tasks:
            self.end(task)
        return tasks

    def tunnels(self) -> list[Task]:
        """The tunnels, no longer waiting."""
        tasks = [t for t in self._waiting if type(t.waiting) is tuple]
        for task in tasks:
            self.end(task)
        return tasks

    def clear(self) -> list[Task]:
        """Every waiting task, forgotten (closing: the poller goes with them)."""
        tasks = list(self._waiting)
        self._waiting.clear()
        self._paused.clear()
        return tasks
