"""Children leaving service: their last requests are drained off the update worker.

After a switch the old child finishes what it is answering (a download, an event stream,
a WebSocket) for up to :data:`DRAIN_TIMEOUT` before it is stopped. Waiting for that on the
update worker held every command meanwhile: a Quit or a check sent while a browser tab kept
a stream open to the old version waited as long as the stream, up to 30 s.

So the worker waits only :data:`GRACE`, which ordinary requests fit in; then, as before, the
child is stopped before the worker goes on. A child still answering after that is left to a
thread of its own, which stops it once its requests end or the drain timeout passes.
Shutdown and a self-update's retire stop those children at once (:meth:`Retiring.stop_all`),
cutting what they still send: the app must not leave a child behind.
"""

from __future__ import annotations

import logging
import threading

from trayupdater.children import Child
from trayupdater.proxy import Generation, ReverseProxy

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 30.0  # the longest an old child may finish its requests
GRACE = 3.0  # the longest the update worker waits for them itself
_JOIN_SECONDS = 15.0  # a stop escalates to SIGKILL after 5 s; then only a stuck kernel waits


class Retiring:
    """The old children still finishing requests in the background."""

    def __init__(
        self, proxy: ReverseProxy, *, drain_timeout: float = DRAIN_TIMEOUT, grace: float = GRACE
    ) -> None:
        self._proxy = proxy
        self._drain_timeout = drain_timeout
        self._grace = min(grace, drain_timeout)
        self._lock = threading.Lock()
        self._leaving: list[tuple[Child, threading.Thread]] = []

    def drain_and_stop(self, child: Child, generation: Generation | None) -> None:
        """Stop ``child`` once the requests of ``generation`` (its traffic) have ended: here
        if they end within the grace, else from a thread of its own."""
        if generation is None or self._proxy.drain(generation, timeout=self._grace):
            _stop(child)
            return
        log.info(
            "%s is still answering %d request(s); it stops when they end (at most %.0f s)",
            child.version,
            generation.in_flight,
            self._drain_timeout,
        )
        thread = threading.Thread(
            target=self._finish, args=(child, generation), name=f"drain {child.version}"
        )
        thread.daemon = True
        with self._lock:
            self._leaving.append((child, thread))
        thread.start()

    def stop_all(self) -> None:
        """Stop every child still draining, now, and wait for them to be gone."""
        with self._lock:
            leaving = list(self._leaving)
        for child, _ in leaving:
            log.info("stopping %s before its last requests end", child.version)
            child.stop()
        for _, thread in leaving:
            thread.join(_JOIN_SECONDS)

    def _finish(self, child: Child, generation: Generation) -> None:
        try:
            if not self._proxy.drain(generation, timeout=self._drain_timeout - self._grace):
                timeout = self._drain_timeout
                log.warning("%s still had requests after %.0f s", child.version, timeout)
            _stop(child)
        except Exception:  # a bug: the thread must still leave the list
            log.exception("stopping %s failed", child.version)
        finally:
            with self._lock:
                self._leaving = [(c, t) for c, t in self._leaving if c is not child]


def _stop(child: Child) -> None:
    log.info("drained %s; stopping it", child.version)
    child.stop()
