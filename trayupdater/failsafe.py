"""When the app cannot start: show why in the tray instead of vanishing silently.

A start at login that fails (port in use, a config file that does not parse, a read-only
data folder) would otherwise end with a line on a terminal nobody sees. In tray mode the
icon appears in its error state, the reason is the status line, the tooltip and a
notification, and the menu offers "Open config", "Open logs" and "Quit" (exit code 1).
Headless, the CLI prints the same one-line reason and exits 1.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from trayupdater.status import Command, Phase, Status

log = logging.getLogger(__name__)

START_FAILED = "start_failed"  # Status.extra key the tray hides the normal actions by


class FailedStart:
    """A Controller for an app that never started: one fixed ERROR status."""

    def __init__(self, error: str, *, app_name: str, proxy_url: str) -> None:
        self._status = Status(
            app_name=app_name,
            phase=Phase.ERROR,
            error=error,
            message=error,
            proxy_url=proxy_url,
            rollback_reason="the app did not start",
            extra={START_FAILED: True},
        )

    def status(self) -> Status:
        return self._status

    def subscribe(self, callback: object) -> None:
        pass  # nothing ever changes

    def send(self, command: Command, payload: object = None) -> None:
        log.info("ignoring %s: the app did not start", command.value)


def show_start_failure(
    error: str,
    *,
    app_name: str,
    proxy_url: str,
    config_path: Path | None,
    logs_dir: Path,
) -> int:
    """Run the tray in its error state until the user quits; the exit code (1)."""
    import threading

    from trayupdater.tray import TrayApp

    # Set before the icon exists (GTK may dock it before its loop runs): a logout that
    # comes meanwhile is remembered and ends the tray as soon as it exists.
    stop = threading.Event()
    trays: list[TrayApp] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        for tray in trays:
            tray.stop()

    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    tray = TrayApp(
        FailedStart(error, app_name=app_name, proxy_url=proxy_url),
        autostart=None,
        logs_dir=logs_dir,
        config_path=config_path,
    )
    trays.append(tray)
    if stop.is_set():
        tray.stop()
    tray.run()
    return 1
