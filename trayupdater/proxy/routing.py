"""Which backend a request goes to: generations, switch, hold, backend death, drain."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from trayupdater.proxy.upstream import Backend, UpstreamPool

log = logging.getLogger(__name__)


class Generation:
    """One routing decision: the backend (or none), its upstream pool, the warm fallback to
    use if it dies, and the requests in flight.

    ``holding``: no backend, but one is coming; requests wait instead of failing.
    ``down``: it was replaced because its backend died; requests in it are retried.
    """

    def __init__(
        self,
        backend: Backend | None,
        pool: UpstreamPool | None,
        *,
        fallback: Backend | None = None,
        holding: bool = False,
    ) -> None:
        self.backend = backend
        self.pool = pool
        self.fallback = fallback
        self.holding = holding and backend is None
        self.down = False
        self._in_flight = 0  # guarded by Router._lock
        self._retired = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _close_pool(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def __repr__(self) -> str:
        label = self.backend.label if self.backend else None
        state = " holding" if self.holding else " down" if self.down else ""
        return f"Generation(backend={label!r}, in_flight={self._in_flight}{state})"


def describe(gen: Generation) -> str:
    if gen.backend is not None:
        fallback = f" (warm fallback {gen.fallback.label})" if gen.fallback else ""
        return gen.backend.label + fallback
    return "no backend, holding requests" if gen.holding else "no backend"


class Router:
    """The current generation, swapped atomically, and the in-flight count of each.

    ``on_change`` is called (outside the lock) after every change of the current generation,
    so whoever holds requests can give them back.
    """

    def __init__(
        self, backend_timeout: float, max_idle: int, on_change: Callable[[], None]
    ) -> None:
        self._backend_timeout = backend_timeout
        self._max_idle = max_idle
        self._on_change = on_change
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)  # a request ended
        self._changed = threading.Condition(self._lock)  # the current generation changed
        self._gen = Generation(None, None)
        self.total_in_flight = 0

    @property
    def generation(self) -> Generation:
        return self._gen

    @property
    def current(self) -> Backend | None:
        return self._gen.backend

    @property
    def fallback(self) -> Backend | None:
        return self._gen.fallback

    def switch(self, backend: Backend | None, fallback: Backend | None = None) -> Generation:
        return self._install(self._new(backend, fallback), None)

    def hold(self) -> Generation:
        return self._install(Generation(None, None, holding=True), None)

    def backend_down(self, backend: Backend) -> bool:
        """``backend`` died: go to the current generation's fallback, or hold; or forget it
        as the fallback. True if routing changed."""
        with self._lock:
            gen = self._gen
            if gen.backend is not None and gen.backend == backend:
                replaced = gen
            elif gen.fallback is not None and gen.fallback == backend:
                gen.fallback = None
                replaced = None
            else:
                return False
        if replaced is None:
            log.info("proxy: warm fallback %s is gone", backend.label)
            return True
        if replaced.fallback is not None and replaced.fallback != backend:
            new = self._new(replaced.fallback, None)
        else:
            new = Generation(None, None, holding=True)
        # Lost a race with another change (switch() meanwhile): that one stands.
        return self._install(new, replaced) is replaced

    def drop_fallback(self, backend: Backend) -> bool:
        """``backend`` is no longer the current generation's fallback; True if it was."""
        with self._lock:
            gen = self._gen
            if gen.fallback is None or gen.fallback != backend:
                return False
            gen.fallback = None
        log.info("proxy: %s is no longer the warm fallback", backend.label)
        return True

    def wait_change(self, gen: Generation, timeout: float) -> bool:
        """Wait up to ``timeout`` for the current generation to be another than ``gen``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._gen is gen:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def drain(self, generation: Generation, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._drained:
            while generation._in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._drained.wait(remaining)
        return True

    def wait_idle(self, busy: Callable[[], bool], deadline: float) -> None:
        """Wait until ``busy()`` is false or ``deadline`` passed, waking on every request end."""
        with self._drained:
            while busy() and time.monotonic() < deadline:
                self._drained.wait(min(0.05, deadline - time.monotonic()))

    def enter(self) -> Generation:
        with self._lock:
            gen = self._gen
            gen._in_flight += 1
            self.total_in_flight += 1
        return gen

    def exit(self, gen: Generation) -> None:
        with self._lock:
            gen._in_flight -= 1
            self.total_in_flight -= 1
            idle = gen._in_flight == 0
            if idle or self.total_in_flight == 0:
                self._drained.notify_all()
        if idle and gen._retired:
            gen._close_pool()

    def close(self) -> None:
        with self._lock:
            gen = self._gen
        gen._close_pool()

    # -- internals ---------------------------------------------------------------------

    def _new(self, backend: Backend | None, fallback: Backend | None) -> Generation:
        pool = None
        if backend is not None:
            pool = UpstreamPool(backend, self._backend_timeout, max_idle=self._max_idle)
        return Generation(backend, pool, fallback=fallback)

    def _install(self, new: Generation, expected: Generation | None) -> Generation:
        """Make ``new`` current (only if ``expected`` still is, when given); the old one."""
        with self._lock:
            old = self._gen
            if expected is not None and old is not expected:
                new._close_pool()
                return old
            self._gen = new
            old._retired = True
            old.down = expected is not None
            idle = old._in_flight == 0
            self._changed.notify_all()
        if idle:
            old._close_pool()
        if expected is not None:
            down = expected.backend.label if expected.backend else "?"
            log.warning("proxy: %s is down; now %s", down, describe(new))
        else:
            log.info("proxy switched to %s", describe(new))
        self._on_change()
        return old
