"""The system tray front end: a pystray icon whose menu and image follow the app's Status.

The tray only reads ``Status`` snapshots and sends ``Command``s (see status.py), so it never
races the update worker. Menu entries are callables evaluated whenever the native menu is
rebuilt (on every status change and after every click), which keeps the status line, the
roll-back entry and the start-at-login checkbox true to the current state.

pystray is imported lazily: without a display ``import pystray`` raises, and the CLI must be
able to ask ``tray_available()`` first and fall back to headless mode.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trayupdater.errors import TrayUpdaterError
from trayupdater.icons import Look, icon_image, look_for
from trayupdater.status import Command, Controller, Phase, Status

if TYPE_CHECKING:
    import pystray

    from trayupdater.autostart import Autostart, LoginChoice

log = logging.getLogger(__name__)

APP_ID = "trayupdater"
MENU_TEXT_LIMIT = 80  # long error texts would make the menu as wide as the screen
FAILURE_REPEAT_AFTER = 300.0  # seconds before the same failure may be announced again

# While the worker is busy a Check would only queue behind the running operation.
_BUSY = frozenset(
    {
        Phase.CHECKING,
        Phase.DOWNLOADING,
        Phase.UPDATING,
        Phase.ROLLING_BACK,
        Phase.STOPPING,
    }
)
# Backends whose menus work; xorg has none (and its clicks never arrive), dummy is a stub.
_MENU_BACKENDS = {"appindicator", "gtk", "darwin", "win32"}


def open_folder(path: Path) -> None:
    """Show ``path`` in the platform's file manager."""
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]  # noqa: S606 - a folder, not a program
        return
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    proc = subprocess.Popen(
        [opener, os.fspath(path)],
        env=_child_env(),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Reap it in the background so no zombie is left behind for the app's lifetime.
    threading.Thread(target=proc.wait, name="open-folder", daemon=True).start()


def _child_env() -> dict[str, str]:
    """The environment for desktop helpers; undoes PyInstaller's library path override."""
    env = dict(os.environ)
    if getattr(sys, "frozen", False):
        for name in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):
            original = env.pop(f"{name}_ORIG", None)
            if original is not None:
                env[name] = original
            else:
                env.pop(name, None)
    return env


@dataclass(frozen=True)
class Notice:
    title: str
    message: str


class Announcer:
    """Decides which status changes deserve a desktop notification.

    Only transitions count: an update or rollback finishing (its message appears), and a
    failure starting. A failure with the same text (numbers ignored, so "restarting in
    4 s" equals "restarting in 8 s") is announced again only after the app recovered in
    between and ``repeat_after`` seconds passed: an offline machine or a crash loop gets
    one notification, not one per poll.
    """

    def __init__(
        self,
        first: Status,
        *,
        clock: Callable[[], float] = time.monotonic,
        repeat_after: float = FAILURE_REPEAT_AFTER,
    ) -> None:
        self._last = first
        self._clock = clock
        self._repeat_after = repeat_after
        self._failure_key: str | None = None
        self._failure_at = 0.0
        self._recovered = True

    def notices(self, new: Status) -> list[Notice]:
        old, self._last = self._last, new
        found: list[Notice] = []
        if new.message != old.message and new.message.startswith(
            ("Updated to", "Rolled back to", "Automatically rolled back to")
        ):
            found.append(Notice(new.app_name, new.message))
        if new.error is None and new.phase is Phase.RUNNING:
            self._recovered = True
        if new.error and new.error != old.error and self._is_new_failure(new.error):
            found.append(Notice(f"{new.app_name}: problem", new.error))
        return found

    def _is_new_failure(self, error: str) -> bool:
        key = re.sub(r"\d+(?:\.\d+)*", "#", error)
        now = self._clock()
        repeat = self._recovered and now - self._failure_at >= self._repeat_after
        if key == self._failure_key and not repeat:
            return False
        self._failure_key, self._failure_at, self._recovered = key, now, False
        return True


class TrayApp:
    """The tray icon and its menu for a running app (``controller``)."""

    def __init__(
        self,
        controller: Controller,
        *,
        autostart: Autostart | None,
        login_choice: LoginChoice | None = None,
        open_url: Callable[[str], Any] = webbrowser.open,
        open_path: Callable[[Path], Any] = open_folder,
        logs_dir: Path,
        icon_factory: Callable[..., pystray.Icon] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._controller = controller
        self._autostart = autostart  # None: not offered (the demo never touches it)
        self._login_choice = login_choice
        self._open_url = open_url
        self._open_path = open_path
        self._logs_dir = logs_dir
        self._status = controller.status()
        self._announcer = Announcer(self._status, clock=clock)
        self._stop_requested = threading.Event()
        self._lock = threading.Lock()  # serialises status handling from worker threads
        self._look = self._look_key(self._status)
        self._menu_key = self._menu_state(self._status)
        factory = icon_factory or _default_icon_factory
        self.icon = factory(
            APP_ID,
            icon=icon_image(self._look[0], warning=self._look[1]),
            title=_clip(self._status.headline),
            menu=self._build_menu(),
        )
        controller.subscribe(self._on_status)
        # A change published between status() and subscribe() would otherwise be missed.
        self._on_status(controller.status())

    # --- lifecycle ---

    def run(self) -> None:
        """Show the icon and handle its events until Quit or ``stop()``; main thread only."""
        if self._stop_requested.is_set():
            return
        try:
            self.icon.run(setup=self._setup)
        except Exception:
            if not self._stop_requested.is_set():
                raise
            # pystray's GTK backend closes its notification on the way out; without a
            # notification daemon that raises (DBus ServiceUnknown) after a clean stop.
            log.warning("tray icon raised while stopping", exc_info=True)

    def stop(self) -> None:
        """Close the icon; ``run()`` returns. Safe from any thread, before or during run."""
        self._stop_requested.set()
        self.icon.stop()

    def _setup(self, icon: pystray.Icon) -> None:
        icon.visible = True
        # A stop() that came before the loop was ready found nothing running to stop.
        if self._stop_requested.is_set():
            icon.stop()

    # --- status changes (worker thread) ---

    def _on_status(self, status: Status) -> None:
        with self._lock:
            self._status = status
            look = self._look_key(status)
            if look != self._look:
                self._look = look
                self.icon.icon = icon_image(look[0], warning=look[1])
            self.icon.title = _clip(status.headline)
            menu_key = self._menu_state(status)
            if menu_key != self._menu_key:
                # Download progress publishes often; rebuild only when something shown changed.
                self._menu_key = menu_key
                self.icon.update_menu()
            notices = self._announcer.notices(status)
        for notice in notices:
            self._notify(notice.message, notice.title)

    @staticmethod
    def _look_key(status: Status) -> tuple[Look, bool]:
        # Phase decides the colour; a failure while still serving adds the amber badge.
        look = look_for(status.phase)
        return look, bool(status.error) and look is Look.RUNNING

    def _menu_state(self, status: Status) -> tuple[object, ...]:
        return (
            self._headline_text(status),
            self._message_text(status),
            self._rollback_text(status),
            status.can_roll_back,
            status.phase in _BUSY,
        )

    def _notify(self, message: str, title: str) -> None:
        try:
            self.icon.notify(message, title)
        except Exception:
            # Notifications are a courtesy: a backend without them must not stop the app.
            log.warning("could not show notification %r", message, exc_info=True)

    # --- menu ---

    def _build_menu(self) -> pystray.Menu:
        from pystray import Menu, MenuItem

        autostart_offered = self._autostart is not None
        return Menu(
            MenuItem(lambda _: self._headline_text(self._status), None, enabled=False),
            MenuItem(
                lambda _: self._message_text(self._status),
                None,
                enabled=False,
                visible=lambda _: bool(self._message_text(self._status)),
            ),
            Menu.SEPARATOR,
            MenuItem("Open", self._action(self._open), default=True),
            MenuItem(
                "Check for updates",
                self._action(self._check),
                enabled=lambda _: self._status.phase not in _BUSY,
            ),
            MenuItem(
                lambda _: self._rollback_text(self._status),
                self._action(self._rollback),
                enabled=lambda _: self._status.can_roll_back,
            ),
            Menu.SEPARATOR,
            MenuItem(
                "Start at login" if autostart_offered else "Start at login (not for the demo)",
                self._action(self._toggle_autostart),
                checked=lambda _: self._autostart_enabled(),
                enabled=autostart_offered,
            ),
            MenuItem("Open logs", self._action(self._open_logs)),
            Menu.SEPARATOR,
            MenuItem("Quit", self._action(self._quit)),
        )

    @staticmethod
    def _headline_text(status: Status) -> str:
        return _clip(status.headline)

    @staticmethod
    def _message_text(status: Status) -> str:
        # The headline already carries the error in the ERROR phase: do not say it twice.
        if not status.message or (status.error and status.error in status.headline):
            return ""
        return _clip(status.message)

    @staticmethod
    def _rollback_text(status: Status) -> str:
        if status.can_roll_back:
            return f"Roll back to {status.previous}"
        if status.previous is None:
            reason = status.rollback_reason or "nothing to roll back to"
        else:
            reason = f"not while {status.phase.value.replace('_', ' ')}"
        return f"Roll back ({reason})"

    def _autostart_enabled(self) -> bool:
        if self._autostart is None:
            return False
        try:
            return self._autostart.is_enabled()
        except (OSError, TrayUpdaterError):
            log.warning("cannot read the start-at-login setting", exc_info=True)
            return False

    def _action(self, handler: Callable[[], None]) -> Callable[[], None]:
        """Run a menu handler; report its failure instead of losing it in the GUI loop."""

        def run() -> None:
            try:
                handler()
            except Exception as exc:
                log.exception("menu action %s failed", handler.__name__)
                self._notify(str(exc) or type(exc).__name__, "trayupdater")

        run.__name__ = handler.__name__
        return run

    def _open(self) -> None:
        self._open_url(self._status.proxy_url)

    def _check(self) -> None:
        self._controller.send(Command.CHECK)

    def _rollback(self) -> None:
        if self._status.can_roll_back:  # the native menu may be a moment out of date
            self._controller.send(Command.ROLLBACK)

    def _toggle_autostart(self) -> None:
        # Failures (AutostartError naming the file or registry value) become a notification.
        if self._autostart is None:
            return
        enable = not self._autostart_enabled()
        if enable:
            self._autostart.enable()
        else:
            self._autostart.disable()
        if self._login_choice is not None:
            self._login_choice.record(enabled=enable, by="user")

    def _open_logs(self) -> None:
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        self._open_path(self._logs_dir)

    def _quit(self) -> None:
        self._controller.send(Command.QUIT)
        self.stop()


def _clip(text: str) -> str:
    text = " ".join(text.split())  # one line: a newline in an error would break the menu
    return text if len(text) <= MENU_TEXT_LIMIT else text[: MENU_TEXT_LIMIT - 1] + "…"


# --- choosing and creating the native icon ---


def _default_icon_factory(*args: Any, **kwargs: Any) -> pystray.Icon:
    if "pystray" not in sys.modules and "PYSTRAY_BACKEND" not in os.environ:
        tray_available()  # picks the backend before pystray picks xorg on its own
    import pystray

    cls: type[pystray.Icon] = pystray.Icon
    if cls.__module__ == "pystray._gtk":
        cls = _with_gtk_tooltip(cls)
    return cls(*args, **kwargs)


def _with_gtk_tooltip(base: type[pystray.Icon]) -> type[pystray.Icon]:
    """pystray's GtkStatusIcon sets only the accessible title; show it as tooltip too."""
    from pystray._util.gtk import mainloop

    class TooltipIcon(base):  # type: ignore[valid-type, misc]
        @mainloop
        def _update_title(self) -> None:
            self._status_icon.set_title(self.title)
            self._status_icon.set_tooltip_text(self.title)

        def _show(self) -> None:
            super()._show()
            self._update_title()  # pystray applies a title given at construction nowhere

    return TooltipIcon


def tray_available(*, host_timeout: float = 5.0) -> tuple[bool, str]:
    """Can a tray icon with a working menu be shown here? ``(False, why)`` if not.

    On Linux this needs a display, PyGObject with GTK 3, a D-Bus session bus and a tray
    host: a StatusNotifierItem watcher (KDE, GNOME with the AppIndicator extension) for
    the AppIndicator backend, or an XEmbed tray (``_NET_SYSTEM_TRAY_S0``) for the GTK
    backend. It sets ``PYSTRAY_BACKEND`` accordingly, so call it before importing
    pystray. At login the panel may start after us: wait up to ``host_timeout`` seconds
    for a tray host to appear.
    """
    if "pystray" in sys.modules:
        backend = sys.modules["pystray"].Icon.__module__.rsplit("._", 1)[-1]
        if backend in _MENU_BACKENDS:
            return True, f"pystray backend {backend}"
        return False, f"pystray is already loaded with the {backend} backend, which has no menu"
    chosen = os.environ.get("PYSTRAY_BACKEND", "")
    if chosen and chosen not in _MENU_BACKENDS:
        return False, f"PYSTRAY_BACKEND={chosen} has no usable menu"
    if sys.platform in ("darwin", "win32"):
        return _importable(chosen or sys.platform)
    return _linux_tray(chosen, host_timeout)


def _importable(backend: str) -> tuple[bool, str]:
    os.environ["PYSTRAY_BACKEND"] = backend
    try:
        import pystray  # noqa: F401
    except Exception as exc:  # Xlib and PyObjC raise their own types, not ImportError
        return False, f"cannot load the pystray {backend} backend: {exc}"
    return True, f"pystray backend {backend}"


def _linux_tray(chosen: str, host_timeout: float) -> tuple[bool, str]:
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return False, "no display (DISPLAY and WAYLAND_DISPLAY are not set)"
    os.environ.setdefault("NO_AT_BRIDGE", "1")  # no accessibility bus warnings on stderr
    try:
        import gi

        gi.require_version("Gtk", "3.0")
        from gi.repository import Gio, GLib, Gtk
    except (ImportError, ValueError) as exc:
        return False, f"PyGObject with GTK 3 is not installed ({exc})"
    GLib.set_prgname(APP_ID)  # the window class desktops and tests know the icon by
    if not Gtk.init_check()[0]:
        return False, "GTK cannot open the display"
    try:
        bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
    except GLib.Error as exc:
        return False, f"no D-Bus session bus ({exc.message})"
    has_indicator = _appindicator_importable()
    deadline = time.monotonic() + host_timeout
    while True:
        sni = _dbus_name_has_owner(bus, "org.kde.StatusNotifierWatcher")
        xembed = _xembed_tray_present()
        if chosen:
            backend = chosen
            found = sni or xembed if chosen == "appindicator" else xembed
        else:
            # AppIndicator where a watcher exists (GNOME cannot show XEmbed icons at all);
            # plain GTK on an XEmbed tray, which every other Linux panel provides.
            backend = "appindicator" if sni and has_indicator else "gtk"
            found = (sni and has_indicator) or xembed
        if found:
            break
        if time.monotonic() >= deadline:
            return False, "no system tray host found (no StatusNotifierWatcher, no XEmbed tray)"
        time.sleep(0.25)
    return _importable(backend)


def _appindicator_importable() -> bool:
    import gi

    for name in ("AyatanaAppIndicator3", "AppIndicator3"):
        try:
            gi.require_version(name, "0.1")
        except ValueError:
            continue
        return True
    return False


def _dbus_name_has_owner(bus: Any, name: str) -> bool:
    from gi.repository import Gio, GLib

    try:
        reply = bus.call_sync(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            GLib.Variant("(s)", (name,)),
            GLib.VariantType("(b)"),
            Gio.DBusCallFlags.NONE,
            2000,
            None,
        )
    except GLib.Error:
        return False
    return bool(reply.unpack()[0])


def _xembed_tray_present() -> bool:
    if not os.environ.get("DISPLAY"):
        return False
    try:
        from Xlib import X, display
    except ImportError:
        return False
    try:
        conn = display.Display()
    except Exception:  # python-xlib raises several unrelated types for a bad display
        return False
    try:
        atom = conn.intern_atom(f"_NET_SYSTEM_TRAY_S{conn.get_default_screen()}")
        return conn.get_selection_owner(atom) != X.NONE
    finally:
        conn.close()
