"""The running app: wires the store, proxy, update worker and control endpoint together.

``App`` owns their lifecycles; front ends (headless signal loop, tray) only call
``start``/``stop`` and talk to ``app.updater`` through the Controller interface.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import threading
import time
from collections.abc import Callable

from trayupdater.config import Config
from trayupdater.control import ControlClient, ControlServer
from trayupdater.errors import StorageError, TrayUpdaterError
from trayupdater.handover import take_handover
from trayupdater.instance_lock import InstanceLock
from trayupdater.metrics import Metrics
from trayupdater.proxy import ReverseProxy
from trayupdater.selfupdate import SelfUpdater, finish_pending_update
from trayupdater.shown import LogFormatter
from trayupdater.sources.github import rate_limit_note
from trayupdater.status import Command
from trayupdater.stop_signals import StopSignals
from trayupdater.store import VersionStore
from trayupdater.updater import Updater

log = logging.getLogger(__name__)

# How long a launch that finds the instance lock held waits for its holder to answer on the
# control endpoint (it writes control.json a moment after taking the lock).
INSTANCE_WAIT_SECONDS = 10.0


class AlreadyRunningError(TrayUpdaterError):
    reason = "already_running"

    def __init__(self, client: ControlClient) -> None:
        super().__init__(f"trayupdater is already running (pid {client.pid})")
        self.client = client


class App:
    def __init__(self, config: Config, *, check_on_start: bool = True) -> None:
        self.config = config
        self.instance_lock = InstanceLock(config.data_dir)  # taken by start()
        try:
            self.store = VersionStore(config.data_dir)
            _probe_writable(config.data_dir)
        except OSError as exc:
            raise StorageError(
                f"the data folder {config.data_dir} is not writable "
                f"({exc.strerror or exc}): make it writable, or choose another folder with "
                "--data-dir or [store] data_dir"
            ) from None
        # Called when a second launch found this app (the tray says where it is).
        self.on_activate: list[Callable[[], None]] = []
        self.metrics = Metrics()
        # Started by a self-update: the predecessor lends us its listening socket.
        self.successor = take_handover()
        sock = self.successor.socket if self.successor else None
        self.proxy = ReverseProxy(
            config.bind,
            config.port,
            sock=sock,
            observer=self.metrics,
            hold_seconds=config.hold_seconds,
        )
        self.metrics.watch_proxy(self.proxy)
        self.updater = Updater(
            config,
            self.store,
            self.proxy,
            events=self.metrics,
            check_on_start=check_on_start and self.successor is None,
            self_updater=SelfUpdater.from_config(config),
        )
        self.control = ControlServer(
            config.data_dir,
            status=self.updater.status,
            request=self.updater.request,
            send=self.updater.send,
            metrics=self.metrics.render,
            activate=self._activated,
        )
        self.updater.subscribe(lambda status: self.metrics.set_active(status.active))
        self.updater.on_retire.append(self._retired)
        self._stopped = threading.Event()
        self._log_handler: logging.Handler | None = None

    def start(self) -> None:
        """Start serving; raises AlreadyRunningError if another instance owns this data dir."""
        self._become_the_instance()
        try:
            self._start()
        except BaseException:
            self.instance_lock.release()  # a later launch must not wait for a failed start
            raise  # the log file stays: the reason is written there next (launch.start_failed)

    def _become_the_instance(self) -> None:
        """Take the data folder's instance lock before anything else, or raise
        AlreadyRunningError naming the instance that holds it."""
        if self.successor is not None:
            # A self-update's successor: its predecessor holds the lock until it exits, and
            # it exits only once we serve, so waiting here would stall the handover until it
            # is rolled back. We take the lock as soon as the predecessor lets it go; until
            # then a new launch finds it held and talks to whichever of the two answers.
            self.instance_lock.acquire_when_free()
            return
        data_dir = self.config.data_dir
        deadline = time.monotonic() + INSTANCE_WAIT_SECONDS
        try:
            while not self.instance_lock.acquire():
                # The holder is starting (its control.json comes next), running or quitting.
                running = ControlClient.find(data_dir)
                if running is not None:
                    raise AlreadyRunningError(running)
                if time.monotonic() >= deadline:
                    raise TrayUpdaterError(
                        f"another trayupdater holds the data folder {data_dir} but does not "
                        "answer; quit it, or choose another folder with --data-dir"
                    )
                time.sleep(0.2)
        except OSError as exc:  # a file system without locks: only the check below is left
            log.warning("cannot lock %s (%s); running without it", self.instance_lock.path, exc)
        # Ask too: a build from before the lock may run here, or a successor whose
        # predecessor just exited, before it took the lock.
        running = ControlClient.find(data_dir)
        if running is not None:
            self.instance_lock.release()
            raise AlreadyRunningError(running)

    def _start(self) -> None:
        try:
            self._log_handler = setup_file_logging(self.config)
        except OSError as exc:
            raise StorageError(
                f"cannot write logs to {self.config.logs_dir} ({exc.strerror or exc}): make it "
                "writable, or choose another folder with --set log_dir=PATH or [store] log_dir"
            ) from None
        note = rate_limit_note(self.config)
        if note:
            log.warning("%s", note)
        if self.successor is not None:
            # Serve only once our child is up; the predecessor serves until then.
            self.control.start()
            self.updater.start()
            self.successor.serve_when_ready(self.updater, self.proxy.start)
            return
        finish_pending_update()  # what an earlier self-update left beside the executable
        # The proxy listens before the worker boots: a request in between was answered 503
        # at once. Held instead; boot ends the hold (a child serves, or there is none).
        self.proxy.hold()
        try:
            self.proxy.start()
        except OSError as exc:
            raise TrayUpdaterError(listen_error(self.config.bind, self.config.port, exc)) from None
        try:
            self.control.start()
        except OSError as exc:
            self.proxy.close()
            raise StorageError(
                f"cannot write {self.control.path} ({exc.strerror or exc}): make the data "
                "folder writable, or choose another with --data-dir"
            ) from None
        self.updater.start()
        log.info("serving on http://%s:%d", *self.proxy.address)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        try:
            self.updater.stop()
            self.control.close()
            self.proxy.close()
        finally:
            self.instance_lock.release()  # last: a new launch may start once ours is gone
            stop_file_logging(self._log_handler)

    def run_headless(self) -> int:
        """Run until SIGINT/SIGTERM (or a quit command); stop everything cleanly; exit 0."""
        # Wake on a signal, whichever thread took it, or when the worker stops after a QUIT
        # command; never on a timer on POSIX (see stop_signals).
        with StopSignals() as signals:
            self.start()
            try:
                threading.Thread(
                    target=lambda: (self.updater.wait(), signals.stop()),
                    name="quit-watch",
                    daemon=True,
                ).start()
                signals.wait()
            finally:
                self.stop()
        return 0

    def _retired(self) -> None:
        """A self-update's successor serves: we only watch it now (its probation). Our
        control endpoint must not answer as the app (control.json is the successor's), and
        the lock and the port go to the successor, or, if it crashes, to the old build we
        start again (it must not find them held by us)."""
        self.control.close()
        self.instance_lock.release()
        if self.successor is not None:
            self.successor.socket.close()  # lent to the proxy, which is closed by now

    def quit(self) -> None:
        self.updater.send(Command.QUIT)

    def _activated(self) -> None:
        for callback in list(self.on_activate):
            try:
                callback()
            except Exception:
                log.exception("activate callback failed")


def listen_error(bind: str, port: int, exc: OSError) -> str:
    """One sentence for a proxy that cannot listen, naming the port and what to do."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {bind} is already in use by another program; "
            "start with --port N or set [proxy] port in the config"
        )
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"cannot listen on {bind}:{port}: {reason}; start with --port N or --bind ADDRESS"


def _probe_writable(folder: os.PathLike[str]) -> None:
    """Raise OSError now if ``folder`` cannot take a new file (read-only mount, rights):
    at start-up, with a clear message, not at the first state save."""
    probe = os.path.join(folder, f".write-test-{os.getpid()}")
    with open(probe, "w") as fh:
        fh.write("ok")
    os.unlink(probe)


def setup_file_logging(config: Config) -> logging.Handler | None:
    """Log to a rotating file in the data folder too (the tray's "Open logs" shows it).
    The handler added, for :func:`stop_file_logging`; None if the file already had one."""
    config.logs_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    path = config.logs_dir / "trayupdater.log"
    if any(getattr(h, "baseFilename", None) == os.fspath(path) for h in root.handlers):
        return None
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3)
    handler.setFormatter(LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


def stop_file_logging(handler: logging.Handler | None) -> None:
    """Take the handler off the root logger and close its file: an app stopped in a process
    that goes on (the tests) kept its log file open, and each later app's lines went to
    every earlier app's file too."""
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()
