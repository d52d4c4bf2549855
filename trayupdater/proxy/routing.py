"""Which backend a request goes to: generations, switch and drain."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from trayupdater.proxy.upstream import Backend, UpstreamPool

log = logging.getLogger(__name__)


class Generation:
    """One backend switch: the backend, its upstream pool, and its requests in flight."""

    def __init__(self, backend: Backend | None, pool: UpstreamPool | None) -> None:
        self.backend = backend
        self.pool = pool
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
        return f"Generation(backend={label!r}, in_flight={self._in_flight})"


class Router:
    """The current generation, swapped atomically, and the in-flight count of each."""

    def __init__(self, backend_timeout: float, max_idle: int) -> None:
        self._backend_timeout = backend_timeout
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._gen = Generation(None, None)
        self.total_in_flight = 0

    @property
    def current(self) -> Backend | None:
        return self._gen.backend

    def switch(self, backend: Backend | None) -> Generation:
        pool = None
        if backend is not None:
            pool = UpstreamPool(backend, self._backend_timeout, max_idle=self._max_idle)
        new = Generation(backend, pool)
        with self._lock:
            old, self._gen = self._gen, new
            old._retired = True
            idle = old._in_flight == 0
        if idle:
            old._close_pool()
        log.info("proxy switched to %s", backend.label if backend else "no backend")
        return old

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
