"""Runs the real TrayApp (real pystray backend, real GTK) against a scripted controller.

Used by test_tray_desktop.py under Xvfb: the test clicks through the native menu with
xdotool and reads what happened from the events file, one line per event:

    command check            a Command the tray sent
    status <headline>        the controller published a new Status (after its listeners ran)
    open_url <url>           "Open" was clicked
    open_path <path>         "Open logs" was clicked

The test can also drive it through the harness's stdin, one line each:

    fail              publish an ERROR status (nothing serves), as a crashed child with
                      no version to fall back to would
    progress 0.4      publish a download of 1.2.0 at 40 % (6.3 MB in all)
    idle              back to "running", no download
    dump-menu         write what the open native menu shows to the events file, as
                      "menu <label>" lines ("menu ." for a separator, "sub <label>" for an
                      open submenu's items): the real GTK widgets, not the model

The scripted controller behaves like the update worker from the tray's point of view:
commands go to a worker thread, which publishes Checking… and then "Updated to 1.1.0"
after CHECK, and "Rolled back to 1.0.0" after ROLLBACK. To run the real app instead, add
a branch to ``make_controller`` that builds ``trayupdater.app.App`` from a config (a local
release feed), starts it and returns ``app.updater`` with ``app.stop`` as cleanup: the
events file then only records clicks, and the test reads state through the app itself.

Exit codes: 0 after Quit, 3 when no tray can be shown (the reason goes to stderr).
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from trayupdater.autostart import Autostart
from trayupdater.status import Command, Controller, Phase, Status


class EventLog:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def write(self, kind: str, value: str) -> None:
        with self._lock, self._path.open("a", encoding="utf-8") as fh:
            fh.write(f"{kind} {value}\n")


class ScriptedController:
    """Two versions, 1.0.0 and 1.1.0; CHECK updates to 1.1.0, ROLLBACK goes back."""

    def __init__(self, events: EventLog) -> None:
        self._events = events
        self._status = Status(
            app_name="simple-server",
            phase=Phase.RUNNING,
            active="1.0.0",
            proxy_url="http://127.0.0.1:18080",
            rollback_reason="nothing to roll back to",
        )
        self._listeners: list[Callable[[Status], None]] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[Command] = queue.Queue()
        threading.Thread(target=self._work, name="scripted-worker", daemon=True).start()

    def status(self) -> Status:
        with self._lock:
            return self._status

    def subscribe(self, callback: Callable[[Status], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def send(self, command: Command, payload: object = None) -> None:
        self._events.write("command", command.value + ("" if payload is None else f" {payload}"))
        self._queue.put(command)

    def fail(self, error: str) -> None:
        self._publish(phase=Phase.ERROR, error=error, message=error)

    def _work(self) -> None:
        while True:
            command = self._queue.get()
            if command is Command.CHECK:
                self._publish(phase=Phase.CHECKING, message="Checking…")
                self._publish(
                    phase=Phase.RUNNING,
                    active="1.1.0",
                    previous="1.0.0",
                    latest="1.1.0",
                    rollback_reason=None,
                    release_url="https://example.org/demo/releases/tag/v1.1.0",
                    release_notes="Faster start-up",
                    last_check=time.time(),
                    message="Updated to 1.1.0",
                )
            elif command is Command.ROLLBACK:
                self._publish(phase=Phase.ROLLING_BACK, message="Rolling back to 1.0.0…")
                self._publish(
                    phase=Phase.RUNNING,
                    active="1.0.0",
                    previous=None,
                    rollback_reason="nothing to roll back to",
                    message="Rolled back to 1.0.0",
                )
            elif command is Command.PAUSE:
                self._publish(paused=True, message="Updates paused until resumed")
            elif command is Command.QUIT:
                self._publish(phase=Phase.STOPPING, message="Stopped")
                return

    def _publish(self, **changes: object) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)  # type: ignore[arg-type]
            status, listeners = self._status, list(self._listeners)
        for callback in listeners:
            callback(status)
        self._events.write("status", status.headline)


def make_controller(
    args: argparse.Namespace, events: EventLog
) -> tuple[Controller, Callable[[], None]]:
    """The app the tray drives, and how to stop it once the tray has quit."""
    return ScriptedController(events), lambda: None


def _read_script(controller: ScriptedController, tray: object, events: EventLog) -> None:
    for line in sys.stdin:
        word, _, arg = line.strip().partition(" ")
        if word == "fail":
            controller.fail("1.0.0 exited (code 1) and no other version is installed")
        elif word == "progress":
            total = 6_300_000
            controller._publish(
                phase=Phase.DOWNLOADING,
                latest="1.2.0",
                progress=float(arg),
                download_done=int(total * float(arg)),
                download_total=total,
                release_url="https://example.org/demo/releases/tag/v1.2.0",
            )
        elif word == "idle":
            controller._publish(phase=Phase.RUNNING, progress=None, download_done=None)
        elif word == "dump-menu":
            _dump_menu(tray, events)


def _dump_menu(tray: object, events: EventLog) -> None:
    """What the native GTK menu shows right now, read from its widgets on the GTK loop."""
    from gi.repository import GLib, Gtk

    done = threading.Event()

    def dump() -> bool:
        menu = getattr(tray.icon, "_menu_handle", None)  # type: ignore[attr-defined]
        lines = []
        for widget in menu.get_children() if menu is not None else []:
            if isinstance(widget, Gtk.SeparatorMenuItem):
                lines.append("menu .")
                continue
            lines.append(f"menu {widget.get_label()}")
            sub = widget.get_submenu()
            if sub is not None and sub.get_visible():
                lines += [f"sub {item.get_label()}" for item in sub.get_children()]
        lines.append(f"menu-visible {bool(menu is not None and menu.get_visible())}")
        for text in lines:
            kind, _, value = text.partition(" ")
            events.write(kind, value)
        events.write("dumped", "menu")
        done.set()
        return False

    GLib.idle_add(dump)
    done.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, required=True, help="file to append events to")
    parser.add_argument("--logs-dir", type=Path, required=True)
    parser.add_argument("--host-timeout", type=float, default=15.0)
    args = parser.parse_args(argv)

    from trayupdater.tray import TrayApp, tray_available

    ok, why = tray_available(host_timeout=args.host_timeout)
    if not ok:
        print(f"tray_harness: no tray: {why}", file=sys.stderr)
        return 3
    events = EventLog(args.events)
    events.write("backend", why)
    controller, cleanup = make_controller(args, events)
    # Start-at-login is the real thing; the test points XDG_CONFIG_HOME at a temp folder.
    autostart = Autostart([sys.executable, "-m", "trayupdater"])
    tray = TrayApp(
        controller,
        autostart=autostart,
        open_url=lambda url: events.write("open_url", url),
        open_path=lambda path: events.write("open_path", str(path)),
        logs_dir=args.logs_dir,
    )
    if isinstance(controller, ScriptedController):
        threading.Thread(target=_read_script, args=(controller, tray, events), daemon=True).start()
    try:
        tray.run()
    finally:
        cleanup()
    events.write("exit", "0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
