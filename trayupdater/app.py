"""The running app: wires the store, proxy, update worker and control endpoint together.

``App`` owns their lifecycles; front ends (headless signal loop, tray) only call
``start``/``stop`` and talk to ``app.updater`` through the Controller interface.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import threading
from types import FrameType

from trayupdater.config import Config
from trayupdater.control import ControlClient, ControlServer
from trayupdater.errors import TrayUpdaterError
from trayupdater.handover import take_handover
from trayupdater.metrics import Metrics
from trayupdater.proxy import ReverseProxy
from trayupdater.selfupdate import SelfUpdater, finish_pending_update
from trayupdater.sources.github import rate_limit_note
from trayupdater.status import Command
from trayupdater.store import VersionStore
from trayupdater.updater import Updater

log = logging.getLogger(__name__)


class AlreadyRunningError(TrayUpdaterError):
    reason = "already_running"

    def __init__(self, client: ControlClient) -> None:
        super().__init__(f"trayupdater is already running (pid {client.pid})")
        self.client = client


class App:
    def __init__(self, config: Config, *, check_on_start: bool = True) -> None:
        self.config = config
        self.store = VersionStore(config.data_dir)
        self.metrics = Metrics()
        # Started by a self-update: the predecessor lends us its listening socket.
        self.successor = take_handover()
        sock = self.successor.socket if self.successor else None
        self.proxy = ReverseProxy(config.bind, config.port, sock=sock, observer=self.metrics)
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
        )
        self.updater.subscribe(lambda status: self.metrics.set_active(status.active))
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start serving; raises AlreadyRunningError if another instance owns this data dir."""
        running = None if self.successor else ControlClient.find(self.config.data_dir)
        if running is not None:
            raise AlreadyRunningError(running)
        setup_file_logging(self.config)
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
        try:
            self.proxy.start()
        except OSError as exc:
            raise TrayUpdaterError(
                f"cannot listen on {self.config.bind}:{self.config.port}: {exc.strerror or exc}"
                " (is another program using the port? set [proxy] port)"
            ) from None
        self.control.start()
        self.updater.start()
        log.info("serving on http://%s:%d", *self.proxy.address)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.updater.stop()
        self.control.close()
        self.proxy.close()

    def run_headless(self) -> int:
        """Run until SIGINT/SIGTERM (or a quit command); stop everything cleanly; exit 0."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.start()
        try:
            # Wake on a signal or when the worker stops after a QUIT command.
            while not stop.wait(0.5):
                if self.updater.wait(0):
                    break
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def quit(self) -> None:
        self.updater.send(Command.QUIT)


def setup_file_logging(config: Config) -> None:
    """Log to a rotating file in the data folder too (the tray's "Open logs" shows it)."""
    config.logs_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    path = config.logs_dir / "trayupdater.log"
    if any(getattr(h, "baseFilename", None) == os.fspath(path) for h in root.handlers):
        return
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
