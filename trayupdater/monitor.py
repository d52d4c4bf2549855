"""Watching a running child from its own thread, so its death moves traffic at once.

The update worker handles one job at a time; if it learned of a dead child from its queue,
requests would reach the dead port until the worker got round to it. A
:class:`ChildMonitor` instead waits on the process itself (a pidfd where the OS has one:
the wake-up is the exit) and, while the child is on probation, probes its health every
``probe_interval`` seconds; outside probation it checks every second that something still
listens on the child's port: a connection, opened and closed, with no request in it (the
kernel completes it for a busy server too, so a busy child is never judged; binding the
port to test it instead could steal it from a child that binds it again). The first exit,
``failures`` failed probes in a row, or :data:`DEAF_SECONDS` of refused connections, calls
``on_down(child, why)`` once, from the monitor thread: the caller tells the proxy
(``backend_down``: switch to the warm previous child, or hold requests) and queues the
bookkeeping for the worker. A child stopped on purpose is :meth:`stop`-ped first, so its
exit is not reported.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
from collections.abc import Callable

from trayupdater.children import Child
from trayupdater.processes import describe_exit

log = logging.getLogger(__name__)

PROBE_INTERVAL = 0.25  # seconds between health probes while on probation
PROBE_TIMEOUT = 2.0
PROBE_FAILURES = 2  # failed probes in a row that count as "stopped answering"
# Outside probation: seconds in a row of connections refused by the child's port that count
# as "stopped listening" (a crashed accept loop in a process that lives on).
DEAF_SECONDS = 3
LISTEN_TIMEOUT = 1.0


def probe(child: Child, path: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if ``child`` answers ``GET path`` with 200, else why not (a few words)."""
    if not child.is_alive():
        return describe_exit(child.returncode)
    conn = http.client.HTTPConnection(child.host, child.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close", "User-Agent": "trayupdater"})
        response = conn.getresponse()
        response.read(65536)
        if response.status == 200:
            return None
        return f"answered GET {path} with HTTP {response.status}"
    except (OSError, http.client.HTTPException) as exc:
        return f"did not answer GET {path} ({type(exc).__name__})"
    finally:
        conn.close()


def nothing_listens(host: str, port: int) -> bool:
    """True only if a connection to ``port`` on ``host`` is refused. A timeout (a full
    backlog) or any other error proves nothing, so it counts as listening."""
    try:
        socket.create_connection((host, port), timeout=LISTEN_TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        pass
    return False


class ChildMonitor:
    def __init__(
        self,
        child: Child,
        on_down: Callable[[Child, str], None],
        *,
        health_path: str,
        probe_interval: float = PROBE_INTERVAL,
        failures: int = PROBE_FAILURES,
    ) -> None:
        self.child = child
        self._on_down = on_down
        self._health_path = health_path
        self._interval = probe_interval
        self._failures = failures
        self._probing = threading.Event()
        self._stopped = threading.Event()
        self._reported = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"monitor-{child.version}", daemon=True
        )

    def start(self, *, probing: bool = False) -> ChildMonitor:
        self.set_probing(probing)
        self._thread.start()
        return self

    def set_probing(self, on: bool) -> None:
        """Probe health too (probation), or watch only for the exit."""
        if on:
            self._probing.set()
        else:
            self._probing.clear()

    def stop(self) -> None:
        """The child is about to be stopped on purpose: report nothing from now on."""
        with self._lock:
            self._stopped.set()

    def _run(self) -> None:
        failed = deaf = 0
        try:
            while not self._stopped.is_set():
                if self.child.wait_exit(self._interval if self._probing.is_set() else 1.0):
                    self._report(f"{describe_exit(self.child.returncode)}")
                    return
                if not self._probing.is_set():
                    failed = 0
                    # A process alive with its listener gone (a crashed accept loop) served
                    # nothing for good while it counted as running: restart it like an exit.
                    deaf = deaf + 1 if nothing_listens(self.child.host, self.child.port) else 0
                    if deaf >= DEAF_SECONDS and not self.child.wait_exit(0):
                        self._report(f"stopped listening on port {self.child.port}")
                        return
                    continue
                deaf = 0
                why = probe(self.child, self._health_path)
                if why is None:
                    failed = 0
                    continue
                failed += 1
                log.info("%s health probe failed (%d): %s", self.child.version, failed, why)
                if self.child.wait_exit(0):
                    continue  # reported as an exit on the next round
                if failed >= self._failures:
                    self._report(f"stopped answering its health check ({why})")
                    return
        except Exception:  # a bug here must not leave the child unwatched silently
            log.exception("monitor of %s failed", self.child.version)

    def _report(self, why: str) -> None:
        # Under the lock: once stop() has returned, no report can still be on its way.
        with self._lock:
            if self._stopped.is_set() or self._reported:
                return
            self._reported = True
            self._on_down(self.child, why)
