"""Starting a child of an installed version: healthy, and, before it takes traffic, staying so.

A child is started with its log, its environment and the stop signal its server shuts down
gracefully on, and must answer ``GET health_path`` within ``health_timeout``; one that exits
at start because another program took its port first is started again on another. Before
it replaces a serving child it is also *soaked*: probed every
:data:`~trayupdater.monitor.PROBE_INTERVAL` for ``min_ready_seconds``. Any failure stops it
and raises :class:`ChildError`; which child then serves is :mod:`serving`'s.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from trayupdater import child_logs
from trayupdater.cancel import Interrupt
from trayupdater.children import Child, port_taken
from trayupdater.config import Config
from trayupdater.errors import ChildError, StorageError
from trayupdater.monitor import PROBE_INTERVAL, probe
from trayupdater.store import InstalledVersion

log = logging.getLogger(__name__)

PORT_RETRIES = 2  # new ports tried when another program took the child's first


def child_log_path(config: Config, version: str) -> Path:
    return child_logs.log_path(config.logs_dir, version)


def start_healthy(
    config: Config,
    installed: InstalledVersion,
    *,
    soak: bool,
    publish: Callable[..., None],
    interrupt: Interrupt,
    cancellable: bool = False,
) -> Child:
    """A healthy child of ``installed`` (soaked first when ``soak``); ChildError if not.
    ``cancellable``: an urgent command (quit, rollback) stops the wait for its health with
    CancelledError, as it stops the soak: a slow starter must not hold them for
    ``health_timeout`` (an update only; its caller handles CancelledError)."""
    log_path = child_log_path(config, installed.version)
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"cannot write the child's log in {log_path.parent}: {exc.strerror or exc}"
        ) from None
    for attempt in range(PORT_RETRIES + 1):
        child = Child(
            installed.executable,
            installed.version,
            command=config.command,
            log_path=log_path,
            cwd=installed.folder,
            env=dict(config.env),
            secrets=[config.token] if config.token else [],
            # simple-server (Go) shuts down gracefully on Interrupt only; SIGTERM kills it.
            stop_signal=getattr(signal, "SIGINT", None) if os.name == "posix" else None,
        )
        started = time.monotonic()
        child.start()
        try:
            child.wait_healthy(
                path=config.health_path,
                expect=config.health_expect,
                timeout=config.health_timeout,
                check=interrupt.check if cancellable else None,
            )
        except ChildError:
            exited = child.returncode is not None  # by itself: stop() below sets it too
            child.stop()
            if attempt < PORT_RETRIES and exited and lost_its_port(child):
                log.warning(
                    "%s exited at start: another program took port %d first; another port",
                    installed.version,
                    child.port,
                )
                continue
            raise
        except BaseException:
            child.stop()  # never a child left running that nobody supervises
            raise
        break
    log.info(
        "%s healthy %.0f ms after start", installed.version, (time.monotonic() - started) * 1000
    )
    try:
        if soak and config.min_ready_seconds > 0:
            _soak(config, child, publish, interrupt)
    except BaseException:
        child.stop()
        raise
    return child


def lost_its_port(child: Child) -> bool:
    """Did ``child``, which exited at start, lose its port to another program? The port was
    free when it was picked, but another program (an outgoing connection's port, often)
    can take it before the child binds it: the child then fails, through no fault of its
    release, which must not be blocked for that."""
    return port_taken(child.host, child.port)


def _soak(config: Config, child: Child, publish: Callable[..., None], interrupt: Interrupt) -> None:
    seconds = config.min_ready_seconds
    publish(message=f"Checking that {child.version} stays healthy…")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if child.wait_exit(min(PROBE_INTERVAL, left)):
            raise child.exit_error(f"during its {seconds:g} s readiness check")
        interrupt.check()
        why = probe(child, config.health_path)
        if why is not None:
            raise ChildError(f"{child.name} {why} during its {seconds:g} s readiness check")
    log.info("%s stayed healthy for %g s", child.version, seconds)
