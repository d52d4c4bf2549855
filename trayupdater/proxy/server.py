"""The public proxy: options, lifecycle, routing commands."""

from __future__ import annotations

import logging
import socket
import threading
import time

from trayupdater.errors import ConfigError
from trayupdater.memory import release_free_memory
from trayupdater.proxy import capacity
from trayupdater.proxy.bodies import Bodies
from trayupdater.proxy.dispatcher import Dispatcher
from trayupdater.proxy.forward import Forwarder
from trayupdater.proxy.holding import HoldRoom
from trayupdater.proxy.observer import NullObserver, ProxyObserver, Reporter
from trayupdater.proxy.routing import Generation, Router
from trayupdater.proxy.service import Service
from trayupdater.proxy.sockets import shutdown
from trayupdater.proxy.summary import LogSummary
from trayupdater.proxy.upstream import Backend

log = logging.getLogger(__name__)
LOGGER = "trayupdater.proxy"

LISTEN_BACKLOG = 1024  # the default of 5 gave a 1.7 s p99 under a burst of connections
CLOSE_GRACE = 2.0  # close(): how long in-flight requests may finish before being cut


class ReverseProxy:
    """HTTP/1.1 reverse proxy with atomic backend switch and drain. See the package doc.

    ``sock``: an already listening socket (handed over by a predecessor) instead of binding
    ``bind``:``port``; the caller keeps ownership of it. ``workers``: how many requests are
    served at once (the backend sees no more), and the threads for the parts of them that
    may block (see the package doc: streamed bodies, slow clients, retries, WebSockets).
    ``backend_timeout``: connect and per-read/write limit towards the backend (then 504).
    ``client_idle_timeout``: how long a keep-alive connection may stay silent, and the
    per-read/write limit towards a client mid-request. ``header_timeout``: from a new
    connection or the first byte of a head to its end (then 408). ``max_header_bytes``:
    larger heads get 431. ``observer``: metrics hook, see :class:`ProxyObserver`.

    Request bodies (see :mod:`trayupdater.proxy.bodies`): up to ``max_buffered_body`` bytes
    are received by the dispatcher before a worker takes the request, while the bodies buffered
    across all connections stay under ``max_buffered_total`` bytes; larger ones are streamed.
    A client must not pause longer than ``body_timeout`` within a body and must keep
    ``body_min_rate`` bytes/s on average after that grace, else 408.

    Held requests (see :mod:`trayupdater.proxy.holding`): while there is no backend but one
    is coming, or the backend cannot be reached, requests wait up to ``hold_seconds`` instead
    of failing; at most ``max_held`` of them keeping ``max_held_bytes`` bytes in all.
    """

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = 8080,
        *,
        sock: socket.socket | None = None,
        workers: int = 64,
        backend_timeout: float = 30.0,
        client_idle_timeout: float = 60.0,
        header_timeout: float = 10.0,
        max_header_bytes: int = 64 * 1024,
        max_buffered_body: int = 1024 * 1024,
        max_buffered_total: int = 64 * 1024 * 1024,
        body_timeout: float = 20.0,
        body_min_rate: float = 500.0,
        hold_seconds: float = 10.0,
        max_held: int = 1000,
        max_held_bytes: int = 64 * 1024 * 1024,
        observer: ProxyObserver | None = None,
    ) -> None:
        if not 1 <= workers <= 4096:
            raise ConfigError(f"proxy workers must be between 1 and 4096, got {workers}")
        if not 0 <= port <= 65535:
            raise ConfigError(f"proxy port must be between 0 and 65535, got {port}")
        for name, value in (
            ("backend_timeout", backend_timeout),
            ("client_idle_timeout", client_idle_timeout),
            ("header_timeout", header_timeout),
            ("body_timeout", body_timeout),
            ("hold_seconds", hold_seconds),
        ):
            if not value > 0:
                raise ConfigError(f"proxy {name} must be a positive number of seconds, got {value}")
        if not body_min_rate > 0:
            raise ConfigError(f"proxy body_min_rate must be positive, got {body_min_rate}")
        if max_header_bytes < 1024:
            raise ConfigError(f"proxy max_header_bytes must be >= 1024, got {max_header_bytes}")
        for name, size in (
            ("max_buffered_body", max_buffered_body),
            ("max_buffered_total", max_buffered_total),
            ("max_held", max_held),
            ("max_held_bytes", max_held_bytes),
        ):
            if not (isinstance(size, int) and size >= 0):
                raise ConfigError(f"proxy {name} must be a number of bytes >= 0, got {size!r}")
        self._bind_host = bind
        self._bind_port = port
        self._given_sock = sock
        self._workers = workers
        self.backend_timeout = float(backend_timeout)
        self.client_idle_timeout = float(client_idle_timeout)
        self.header_timeout = float(header_timeout)
        self.max_header_bytes = max_header_bytes
        # Repeated events (backend errors, retries, holds) are logged once a second.
        summary = LogSummary(logging.getLogger(LOGGER), on_due=self._wake_dispatcher)
        self._report = Reporter(observer or NullObserver(), summary)
        self._router = Router(self.backend_timeout, max_idle=workers, on_change=self._changed)
        self._room = HoldRoom(float(hold_seconds), max_held, max_held_bytes)
        self._bodies = Bodies(
            max_body=max_buffered_body,
            max_total=max_buffered_total,
            timeout=float(body_timeout),
            min_rate=float(body_min_rate),
            max_trailer=max_header_bytes,
        )
        self._forwarder = Forwarder(
            self._router, self._report, self._bodies, self._room, max_header_bytes
        )
        self._service = Service(
            self._forwarder,
            self._bodies,
            self._report,
            max_header_bytes=self.max_header_bytes,
            header_timeout=self.header_timeout,
            idle_timeout=self.client_idle_timeout,
        )

        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._dispatcher: Dispatcher | None = None
        # How often deadlines (header_timeout, idle keep-alive, bodies, answers) are checked.
        shortest = min(
            self.header_timeout,
            self.client_idle_timeout,
            self._bodies.timeout,
            self.backend_timeout,
        )
        self._scan_every = min(1.0, max(0.02, shortest / 4))
        self._address: tuple[str, int] | None = None
        self._closed = False

    def _wake_dispatcher(self) -> None:
        """A log summary is due sooner: the dispatcher (which flushes it) may be asleep."""
        dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.wake()

    # -- public API ------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (unless a listening socket was given) and start the threads."""
        if self._dispatcher is not None:
            raise RuntimeError("proxy already started")
        capacity.raise_descriptor_limit(self._workers)
        listener = self._given_sock if self._given_sock is not None else self._listen()
        listener.setblocking(False)
        self._listener = listener
        host, port = listener.getsockname()[:2]
        self._address = (str(host), int(port))
        self._dispatcher = dispatcher = Dispatcher(
            listener,
            idle_timeout=self.client_idle_timeout,
            header_timeout=self.header_timeout,
            backend_timeout=self.backend_timeout,
            scan_every=self._scan_every,
            max_in_flight=self._workers,
            service=self._service,
            forwarder=self._forwarder,
            bodies=self._bodies,
            room=self._room,
            generation=lambda: self._router.generation,
            reporter=self._report,
            on_failure=self._dispatcher_failed,
            on_quiet=self._quiet,
        )
        self._spawn("proxy-dispatcher", dispatcher.run)
        for i in range(self._workers):
            self._spawn(f"proxy-worker-{i}", dispatcher.workers.run)
        log.info("proxy listening on %s:%d", *self._address)

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("proxy not started")
        return self._address

    @property
    def current(self) -> Backend | None:
        """The backend new requests go to (None: holding them, or no backend at all)."""
        return self._router.current

    @property
    def fallback(self) -> Backend | None:
        """The warm backend the current one falls back to if it dies."""
        return self._router.fallback

    @property
    def held_count(self) -> int:
        """Requests held right now, waiting for a backend."""
        return self._room.count

    @property
    def held_bytes(self) -> int:
        """Bytes those held requests keep for their replay."""
        return self._room.size

    @property
    def buffered_body_bytes(self) -> int:
        """Bytes of request bodies the dispatcher is receiving, across all connections."""
        return self._bodies.buffered_bytes

    def switch(self, backend: Backend | None, *, fallback: Backend | None = None) -> Generation:
        """Route new requests to ``backend``; returns the old generation, to drain.

        ``backend`` None: answer 503 at once (shutdown, nothing installed). ``fallback``: a
        warm previous backend to go back to at once if ``backend`` dies (probation).
        Held requests are given to the new generation.
        """
        for value, what in ((backend, "switch()"), (fallback, "fallback")):
            if value is not None and not isinstance(value, Backend):
                raise TypeError(f"{what} takes a Backend or None, not {type(value).__name__}")
        return self._router.switch(backend, fallback)

    def hold(self) -> Generation:
        """No backend right now, but one is coming (a child restarting or backing off):
        requests wait up to ``hold_seconds`` for the next switch(), then get 503 with
        Retry-After. Returns the old generation."""
        return self._router.hold()

    def backend_down(self, backend: Backend) -> bool:
        """``backend`` died (its process exited, or it fails health). Any thread; fast.

        If it is the current backend: switch to its fallback at once if there is one, else
        hold(). If it is the current fallback: forget it. Requests to it that have no
        response yet are cut loose, to be retried. True if routing changed.
        """
        if not isinstance(backend, Backend):
            raise TypeError(f"backend_down() takes a Backend, not {type(backend).__name__}")
        changed = self._router.backend_down(backend)
        for slot in list(self._service.serving):
            attempt = slot.attempt
            if attempt is not None and attempt[1].backend == backend and not slot.responding:
                shutdown(attempt[0])
        return changed

    def drop_fallback(self, backend: Backend) -> bool:
        """``backend``, alive and well, is no longer the warm fallback (its probation is
        over): no request goes to it again, and those it is answering are left to finish
        (see :meth:`drain`), not cut as :meth:`backend_down` cuts them. True if it was."""
        return self._router.drop_fallback(backend)

    def drain(self, generation: Generation, timeout: float) -> bool:
        """Wait until ``generation`` has no request in flight; False if ``timeout`` passed."""
        return self._router.drain(generation, timeout)

    def listening_socket(self) -> socket.socket:
        """The listening socket, to hand over to a successor process."""
        sock = self._listener or self._given_sock
        if sock is None:
            raise RuntimeError("proxy not started")
        return sock

    def close(self) -> None:
        """Stop accepting, let in-flight requests finish for a short grace, then cut the rest."""
        if self._closed:
            return
        self._closed = True
        self._forwarder.relay.closing = True
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        dispatcher.flush_held()
        dispatcher.stop_accepting()
        if self._given_sock is None and self._listener is not None:
            self._listener.close()  # a socket we were given belongs to the caller
        # Kept-alive connections get the grace too (parked, or held by a worker waiting for
        # their next request): that request is answered with "Connection: close" instead of
        # racing a close of the connection.
        self._router.wait_idle(self._has_clients, time.monotonic() + CLOSE_GRACE)
        dispatcher.stop(self._workers)
        for slot in list(self._service.serving):
            shutdown(slot.client)
            shutdown(slot.upstream)
        for thread in self._threads:
            thread.join(timeout=5.0)
            if thread.is_alive():
                log.warning("proxy thread %s did not stop", thread.name)
        self._forwarder.relay.pipes.close()
        self._router.close()

    def __enter__(self) -> ReverseProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _listen(self) -> socket.socket:
        where = f"{self._bind_host}:{self._bind_port}"
        try:
            info = socket.getaddrinfo(
                self._bind_host, self._bind_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except socket.gaierror as exc:
            raise OSError(f"proxy cannot listen on {where}: {exc}") from exc
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        try:
            if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):  # Windows: REUSEADDR would allow theft
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            else:  # restart quickly while old connections sit in TIME_WAIT
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(info[4])
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"proxy cannot listen on {where}: {exc.strerror}") from exc
        return sock

    def _spawn(self, name: str, target: object) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _dispatcher_failed(self) -> None:
        self._forwarder.relay.closing = True

    def _quiet(self) -> bool:
        """The dispatcher saw no event for a while: if no connection is being served either,
        give the memory the last burst freed back to the OS (an idle app's RSS)."""
        if self._service.serving:
            return False
        release_free_memory()
        return True

    def _changed(self) -> None:
        """The current generation changed: held requests go back to the workers."""
        dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.routing_changed()

    def _has_clients(self) -> bool:
        dispatcher = self._dispatcher
        parked = dispatcher is not None and dispatcher.parked_count() > 0
        return self._router.total_in_flight > 0 or bool(self._service.serving) or parked
