"""Running the app: headless or in the tray, one instance per data folder, failures shown.

``run_app`` is what ``trayupdater run`` and ``demo`` end in. A second launch finds the
running instance through its control endpoint, asks it to check for updates and exits (the
running tray says so). Tray mode starts the app before the icon exists, so a failure to
start shows one red icon with the reason (failsafe.py) instead of nothing at login; logout's
SIGTERM/SIGHUP quit as the menu does.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trayupdater.config import Config
from trayupdater.control import ControlClient
from trayupdater.errors import TrayUpdaterError
from trayupdater.status import Command

log = logging.getLogger("trayupdater")


def tray_here() -> bool:
    from trayupdater.tray import tray_available

    use_tray, why = tray_available()
    if not use_tray:
        print(f"trayupdater: no system tray here ({why}); running headless", file=sys.stderr)
    return use_tray


def start_failed(
    exc: TrayUpdaterError, *, config: Config | None, config_path: Path | None, logs_dir: Path
) -> int:
    """Tray mode could not start: say why in the tray (see failsafe.py); exit code 1."""
    from trayupdater.failsafe import show_start_failure

    log.error("cannot start: %s", exc)
    print(f"trayupdater: error: {exc}", file=sys.stderr)
    return show_start_failure(
        str(exc),
        app_name=config.repo_name if config else "trayupdater",
        proxy_url=f"http://{config.bind}:{config.port}" if config else "",
        config_path=config_path,
        logs_dir=logs_dir,
    )


def run_app(
    config: Config,
    *,
    headless: bool,
    on_started: Callable[[], None] | None = None,
    on_app: Callable[[Any], None] | None = None,
    duration: float = 0,
    manage_autostart: bool = True,
    config_path: Path | None = None,
    launch_args: Sequence[str] = (),
) -> int:
    from trayupdater.app import AlreadyRunningError, App
    from trayupdater.handover import is_successor

    # Single instance: a second launch asks the first to check for updates and exits.
    # Checked before the tray is shown, so a second icon never appears, even briefly.
    # A self-update's successor starts while its predecessor still answers: not a second launch.
    running = None if is_successor() else ControlClient.find(config.data_dir)
    if running is not None:
        _second_launch(running)
        return 0
    use_tray = False if headless else tray_here()
    try:
        app = App(config)
    except TrayUpdaterError as exc:
        if not use_tray:
            raise
        return start_failed(exc, config=config, config_path=config_path, logs_dir=config.logs_dir)
    if on_app:
        on_app(app)
    if duration:
        _after(duration, app.quit)
    try:
        if use_tray:
            return _run_tray(
                app,
                on_started,
                manage_autostart=manage_autostart,
                config_path=config_path,
                launch_args=launch_args,
            )
        if on_started:
            _after(0.5, on_started)
        return app.run_headless()
    except AlreadyRunningError as exc:  # lost a start-up race with another launch
        _second_launch(exc.client)
        return 0


def _second_launch(running: ControlClient) -> None:
    running.activate()  # the running tray says "Already running — it is in the tray"
    running.command(Command.CHECK, wait=False)
    print(
        f"trayupdater is already running (pid {running.pid}); asked it to check for updates",
        file=sys.stderr,
    )


def _after(seconds: float, action: Callable[[], None]) -> None:
    """Run ``action`` later without keeping the process alive for it once the app stops."""
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()


def _run_tray(
    app: Any,
    on_started: Callable[[], None] | None,
    *,
    manage_autostart: bool = True,
    config_path: Path | None = None,
    launch_args: Sequence[str] = (),
) -> int:
    from trayupdater.app import AlreadyRunningError
    from trayupdater.autostart import LoginChoice, enable_on_first_run, login_item
    from trayupdater.tray import TrayApp

    autostart = choice = None
    if manage_autostart:
        autostart, choice = login_item(launch_args), LoginChoice()
        if app.config.start_at_login:
            legacy = app.config.data_dir / ".first-run-done"
            try:
                enable_on_first_run(autostart, choice, legacy_marker=legacy)
            except (OSError, TrayUpdaterError) as exc:
                log.warning("could not turn on start at login: %s", exc)
    # Started before the icon exists: a failure shows the error tray instead, never two
    # icons (GTK shows a status icon as soon as it is created). Nothing is missed: the
    # tray announces what the status already says when it appears (an install, an error).
    try:
        app.start()
    except AlreadyRunningError:
        raise
    except TrayUpdaterError as exc:
        return start_failed(
            exc, config=app.config, config_path=config_path, logs_dir=app.config.logs_dir
        )
    # Logging out sends SIGTERM (SIGHUP from a closing terminal): quit as from the menu,
    # so the children are stopped and the state saved, rather than dying mid-step. Set
    # before the icon exists: GTK may dock it in the tray before its loop runs.
    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda signum, frame: app.quit())
    try:
        tray = TrayApp(
            app.updater,
            autostart=autostart,
            login_choice=choice,
            logs_dir=app.config.logs_dir,
            config_path=config_path,
        )
    except BaseException:
        app.stop()
        raise
    app.on_activate.append(tray.say_already_running)
    app.updater.on_retire.append(tray.hide)  # the successor shows its own icon

    # Quit from anywhere (menu, `trayupdater quit`, logout) ends the worker; the icon follows.
    def close_tray_when_worker_ends() -> None:
        app.updater.wait()
        tray.stop()

    threading.Thread(target=close_tray_when_worker_ends, name="tray-closer", daemon=True).start()
    if on_started:
        on_started()
    try:
        tray.run()
    finally:
        app.stop()
    return 0
