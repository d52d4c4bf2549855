"""The worker threads: run the tasks the dispatcher handed over because they may block."""

from __future__ import annotations

import logging
from collections.abc import Callable
from queue import SimpleQueue

from trayupdater.http11 import BufferedSocket
from trayupdater.proxy.clients import Client
from trayupdater.proxy.service import Service, Task
from trayupdater.proxy.sockets import (
    LINGER_NEXT_REQUEST,
    SPIN_SECONDS,
    read_within,
    spin_fill,
    wait_ready,
)
from trayupdater.proxy.steps import LINGER, STALL_SECONDS, Either, Wait, Wakeup

log = logging.getLogger(__name__)


class Workers:
    """What every worker thread runs (see the package doc, "One request code, two drivers").

    A task comes with its generator part-way (see :mod:`steps`): the worker runs it to its
    end, blocking where it has to, and gives the connection back to the dispatcher. Only
    while it serves the only task in flight does it wait for the client's next request
    (LINGER) and busy-poll for a backend's answer: a lone client then stays with its worker,
    with no hand-off per request. Under concurrency the next request goes to the dispatcher,
    so a worker is free again as soon as the part that needed a thread is done. A Wait that
    lasts longer than a moment (a slow client, a stream between events) gives the task back
    to the dispatcher, which runs it on when the socket is ready.
    """

    def __init__(
        self,
        service: Service,
        park: Callable[[Client], None],
        give_back: Callable[[Task, Wait | Either], None],
        backend_timeout: float,
        on_done: Callable[[], None],
    ) -> None:
        self._service = service
        self._park = park
        self._give_back = give_back
        self._backend_timeout = backend_timeout
        self._on_done = on_done  # a request ended: connections waiting their turn may go
        self._queue: SimpleQueue[Task | None] = SimpleQueue()

    def hand(self, task: Task) -> None:
        """The dispatcher: run ``task`` in the next free worker."""
        self._queue.put(task)

    def stop(self, workers: int) -> None:
        for _ in range(workers):
            self._queue.put(None)

    def run(self) -> None:
        """One worker thread, until it is handed None."""
        while True:
            task = self._queue.get()
            if task is None:
                return
            outcome: bool | Wait | Either = False
            try:
                outcome = self._finish(task)
            except Exception:
                log.exception("proxy worker failed; closing that connection")
                # A failure outside the generator leaves it suspended: close it, so that its
                # finally blocks give back the backend connection and the in-flight count.
                task.gen.close()
                task.conn.sock.close()
            if not isinstance(outcome, bool):  # the dispatcher runs it on: not ours any more
                self._give_back(task, outcome)
                continue
            self._service.done(task)
            if outcome:
                self._park(task.conn)
            else:
                self._on_done()

    def _finish(self, task: Task) -> bool | Wait | Either:
        """Run the task's generator to its end; True: park the connection, or the Wait to
        give back to the dispatcher. A backend to wait for is read by the blocking read that
        follows, and BLOCK is what a worker is for."""
        gen, value, exc, serving = task.gen, None, None, self._service.serving
        try:
            while True:
                step = gen.send(value) if exc is None else gen.throw(exc)
                value = exc = None
                if type(step) is Either:  # a tunnel's: the dispatcher's alone
                    return step
                if type(step) is Wait:  # a moment here, then the dispatcher's (see steps.py)
                    # Not for a peer that was slow once: a client trickling its reads would
                    # otherwise cost a worker that moment at every wake-up.
                    moment = 0.0 if task.stalled else STALL_SECONDS
                    try:
                        if wait_ready(step.sock, moment, write=step.write):
                            continue
                    except (OSError, ValueError):  # closed meanwhile (ValueError: fd -1)
                        exc = OSError("connection closed")
                        continue
                    task.stalled = True
                    return step
                if type(step) is Wakeup:  # a turn to connect
                    if not step.wait(self._backend_timeout):
                        exc = TimeoutError("timed out")
                    continue
                if len(serving) > 1 or not SPIN_SECONDS:
                    continue  # not alone: no waiting around, LINGER parks the connection
                if step is LINGER:
                    value = read_within(task.conn, LINGER_NEXT_REQUEST, SPIN_SECONDS)
                elif isinstance(step, BufferedSocket):
                    try:
                        spin_fill(step, SPIN_SECONDS)
                    except OSError as error:  # a reset: thrown into the read it was polling for
                        exc = error
        except StopIteration as stop:
            return bool(stop.value)
