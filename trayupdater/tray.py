"""The system tray front end: a pystray icon whose menu and image follow the app's Status.

The tray only reads ``Status`` snapshots and sends ``Command``s (see status.py), so it never
races the update worker. Menu entries are callables evaluated whenever the native menu is
rebuilt (on every visible status change and after every click), which keeps the status
line, the roll-back entry, the update controls and the start-at-login checkbox true to the
current state; an open GTK menu is refreshed in place (tray_backend.py).

Every click gets feedback: a check the user asked for ends in a notification, an opener
that fails says so with the path or URL, a double-click on the icon opens the page once.

pystray is imported lazily: without a display ``import pystray`` raises, and the CLI must be
able to ask ``tray_available()`` first and fall back to headless mode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trayupdater import announce
from trayupdater.announce import Announcer, Notice, one_sentence
from trayupdater.errors import TrayUpdaterError
from trayupdater.failsafe import START_FAILED
from trayupdater.icons import Look, icon_image, look_for, template_image
from trayupdater.notify import Notifier
from trayupdater.opener import open_folder, open_target
from trayupdater.status import Command, Controller, Phase, Status
from trayupdater.tray_backend import APP_ID, create_icon, tray_available, uses_template_images

if TYPE_CHECKING:
    import pystray

    from trayupdater.autostart import Autostart, LoginChoice

__all__ = ["APP_ID", "TrayApp", "open_folder", "tray_available"]

log = logging.getLogger(__name__)

MENU_TEXT_LIMIT = 80  # long error texts would make the menu as wide as the screen
TOOLTIP_LIMIT = 120
DOUBLE_CLICK = 1.0  # seconds: a second "Open" this soon is the same click
PAUSE_HOUR = 3600.0
MAX_ALLOW_ITEMS = 5
PROGRESS_STEPS = 8  # the busy icon shows download progress in eighths

# While the worker is busy a Check would only queue behind the running operation.
_BUSY = frozenset(
    {Phase.CHECKING, Phase.DOWNLOADING, Phase.UPDATING, Phase.ROLLING_BACK, Phase.STOPPING}
)


class TrayApp:
    """The tray icon and its menu for a running app (``controller``)."""

    def __init__(
        self,
        controller: Controller,
        *,
        autostart: Autostart | None,
        login_choice: LoginChoice | None = None,
        open_url: Callable[[str], Any] | None = None,
        open_path: Callable[[Path], Any] | None = None,
        logs_dir: Path,
        config_path: Path | None = None,
        icon_factory: Callable[..., pystray.Icon] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rich_notifications: bool = True,
    ) -> None:
        self._controller = controller
        self._autostart = autostart  # None: not offered (the demo never touches it)
        self._login_choice = login_choice
        self._open_url = open_url or (lambda url: open_target(url, self._tell))
        self._open_path = open_path or (lambda path: open_target(path, self._tell))
        self._logs_dir = logs_dir
        self._config_path = config_path
        self._clock = clock
        self._status = controller.status()
        # Compared against a blank status, so a failure known at start is announced too.
        self._announcer = Announcer(Status(app_name=self._status.app_name), clock=clock)
        self._stop_requested = threading.Event()
        self._ready = threading.Event()
        self._hidden = False  # hide(): retired by a self-update
        self._pending: list[Notice] = []  # notices from before the icon could show them
        self._lock = threading.Lock()  # serialises status handling from worker threads
        self._last_open = -DOUBLE_CLICK
        self._look = self._look_key(self._status)
        self._menu_key = self._menu_state(self._status)
        factory = icon_factory or create_icon
        self.icon = factory(
            APP_ID,
            icon=self._image(self._look),
            title=self._tooltip(self._status),
            menu=self._build_menu(),
        )
        rich = rich_notifications and icon_factory is None
        self.notifier = Notifier(
            self.icon.notify,
            on_action=self._on_notice_action,
            labels=announce.ACTION_LABELS,
            icon=_app_icon_file() if rich else None,
            rich=rich,
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
        finally:
            self.notifier.close()

    def stop(self) -> None:
        """Close the icon; ``run()`` returns. Safe from any thread, before or during run."""
        self._stop_requested.set()
        self.icon.stop()

    def hide(self) -> None:
        """Take the icon out of the tray but keep ``run()`` going (stopping it would quit
        the app): after a self-update this process only watches its successor, whose own
        icon shows, and exits by itself."""
        with self._lock:
            self._hidden = True
            if self._ready.is_set():
                self.icon.visible = False

    def _setup(self, icon: pystray.Icon) -> None:
        with self._lock:
            icon.visible = not self._hidden
            self._ready.set()
            pending, self._pending = self._pending, []
        for notice in pending:
            self._show(notice)
        # A stop() that came before the loop was ready found nothing running to stop.
        if self._stop_requested.is_set():
            icon.stop()

    def say_already_running(self) -> None:
        """A second launch found this app: tell the user where it is."""
        self._show(Notice("TrayUpdater", "Already running — it is in the tray", ("open",)))

    # --- status changes (worker thread) ---

    def _on_status(self, status: Status) -> None:
        with self._lock:
            self._status = status
            look = self._look_key(status)
            if look != self._look:
                self._look = look
                self.icon.icon = self._image(look)
            self.icon.title = self._tooltip(status)
            menu_key = self._menu_state(status)
            if menu_key != self._menu_key:
                # Download progress publishes often; rebuild only when something shown changed.
                self._menu_key = menu_key
                self.icon.update_menu()
            notices = self._announcer.notices(status)
            if self._hidden:
                notices = []  # retired: the successor speaks for the app now
            elif not self._ready.is_set():
                self._pending += notices
                notices = []
        for notice in notices:
            self._show(notice)

    @staticmethod
    def _look_key(status: Status) -> tuple[Look, bool, int | None]:
        # Red whenever nothing serves because something failed (a crash loop, a failed
        # first install); a failure while still serving adds the amber badge instead.
        look = look_for(status.phase)
        failed = bool(status.error) or status.phase in (Phase.ERROR, Phase.RESTARTING)
        if failed and not status.serving:
            look = Look.ERROR
        step = None
        if status.phase is Phase.DOWNLOADING and status.progress is not None:
            step = max(0, min(PROGRESS_STEPS, int(status.progress * PROGRESS_STEPS)))
        return look, bool(status.error) and look is Look.RUNNING, step

    @staticmethod
    def _image(look: tuple[Look, bool, int | None]) -> Any:
        if uses_template_images() and look[0] is not Look.ERROR and not look[1]:
            return template_image(look[0])  # an error or a warning keeps its colour
        progress = None if look[2] is None else look[2] / PROGRESS_STEPS
        return icon_image(look[0], warning=look[1], progress=progress)

    @staticmethod
    def _tooltip(status: Status) -> str:
        text = _clip(status.headline, TOOLTIP_LIMIT)
        if status.error and status.error not in status.headline:
            text += "\n" + _clip(one_sentence(status.error), TOOLTIP_LIMIT)
        return text

    def _menu_state(self, status: Status) -> tuple[object, ...]:
        return (
            self._headline_text(status),
            self._message_text(status),
            self._rollback_text(status),
            status.can_roll_back,
            status.phase in _BUSY,
            status.error,
            status.release_url,
            status.latest,
            status.update_pending,
            status.blocked,
            status.skipped,
            status.paused,
            status.paused_until,
            status.active,
            status.last_check,
        )

    def _show(self, notice: Notice) -> None:
        self.notifier.notify(notice.title, notice.message, notice.actions)

    def _tell(self, message: str) -> None:
        """Feedback for a click that went wrong (an opener that found nothing)."""
        self._show(Notice("TrayUpdater", message[:1].upper() + message[1:]))

    # --- menu ---

    def _build_menu(self) -> pystray.Menu:
        from pystray import Menu, MenuItem

        def status() -> Status:
            return self._status

        def normal(_: object = None) -> bool:
            return not status().extra.get(START_FAILED)

        autostart_offered = self._autostart is not None
        return Menu(
            MenuItem(lambda _: self._headline_text(status()), None, enabled=False),
            MenuItem(
                lambda _: self._message_text(status()),
                None,
                enabled=False,
                visible=lambda _: bool(self._message_text(status())),
            ),
            Menu.SEPARATOR,
            MenuItem("Open", self._action(self._open), default=True, visible=normal),
            MenuItem(
                "Check for updates",
                self._action(self._check),
                enabled=lambda _: status().phase not in _BUSY,
                visible=normal,
            ),
            MenuItem(
                lambda _: self._rollback_text(status()),
                self._action(self._rollback),
                enabled=lambda _: status().can_roll_back,
                visible=normal,
            ),
            Menu.SEPARATOR,
            MenuItem(
                "Start at login" if autostart_offered else "Start at login (not for the demo)",
                self._action(self._toggle_autostart),
                checked=lambda _: self._autostart_enabled(),
                enabled=autostart_offered,
                visible=normal,
            ),
            MenuItem("Open logs", self._action(self._open_logs)),
            MenuItem(
                "Show error details…",
                self._action(self._open_log_file),
                visible=lambda _: bool(status().error),
            ),
            MenuItem(
                "Open config",
                self._action(self._open_config),
                visible=lambda _: status().phase is Phase.ERROR and self._config_path is not None,
            ),
            Menu.SEPARATOR,
            MenuItem(
                lambda _: f"What's new in {status().latest}",
                self._action(self._whats_new),
                visible=lambda _: bool(status().release_url and status().latest),
            ),
            MenuItem("Updates", self._updates_menu(), visible=normal),
            MenuItem("About", Menu(lambda: self._about_items())),
            Menu.SEPARATOR,
            MenuItem(
                lambda _: f"Quit (stops {status().app_name})" if normal() else "Quit",
                self._action(self._quit),
            ),
        )

    def _updates_menu(self) -> pystray.Menu:
        from pystray import Menu, MenuItem

        def status() -> Status:
            return self._status

        def allow_items() -> list[Any]:
            # The latest blocks, newest first: after years of releases the oldest ones are
            # long gone, and the one a user wants to allow again is the newest.
            held = [*reversed(status().blocked)][:MAX_ALLOW_ITEMS]
            held += [status().skipped] if status().skipped else []
            return [
                MenuItem(
                    f"Allow {version} again",
                    self._action(lambda version=version: self._send(Command.ALLOW, version)),
                )
                for version in dict.fromkeys(held)
            ]

        return Menu(
            lambda: (
                MenuItem(
                    f"Skip {status().update_pending}",
                    self._action(self._skip),
                    visible=lambda _: (
                        bool(status().update_pending)
                        and status().skipped != status().update_pending
                    ),
                ),
                *allow_items(),
                MenuItem(
                    "Pause updates for 1 hour",
                    self._action(lambda: self._send(Command.PAUSE, PAUSE_HOUR)),
                    visible=lambda _: not status().paused,
                ),
                MenuItem(
                    "Pause updates until resumed",
                    self._action(lambda: self._send(Command.PAUSE, None)),
                    visible=lambda _: not status().paused,
                ),
                MenuItem(
                    lambda _: f"Resume updates ({_pause_text(status())})",
                    self._action(lambda: self._send(Command.UNPAUSE)),
                    visible=lambda _: status().paused,
                ),
            )
        )

    def _about_items(self) -> tuple[Any, ...]:
        from pystray import MenuItem

        from trayupdater.about import about_lines

        return tuple(
            MenuItem(_clip(line), None, enabled=False) for line in about_lines(self._status)
        )

    @staticmethod
    def _headline_text(status: Status) -> str:
        return _clip(status.headline)

    @staticmethod
    def _message_text(status: Status) -> str:
        # The headline already carries the error in the ERROR phase: do not say it twice.
        if not status.message or (status.error and status.error in status.headline):
            return ""
        return _clip(one_sentence(status.message) if status.error else status.message)

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
                log.exception("menu action %s failed", getattr(handler, "__name__", handler))
                self._tell(str(exc) or type(exc).__name__)

        run.__name__ = getattr(handler, "__name__", "action")
        return run

    def _send(self, command: Command, payload: object = None) -> None:
        if payload is None:
            self._controller.send(command)  # also for controllers that take no payload
        else:
            self._controller.send(command, payload)

    def _open(self) -> None:
        # A double-click on the GTK status icon fires its default action twice.
        now = self._clock()
        if now - self._last_open < DOUBLE_CLICK:
            return
        self._last_open = now
        self._open_url(self._status.proxy_url)

    def _check(self) -> None:
        with self._lock:
            self._announcer.expect_check_result()
        self._controller.send(Command.CHECK)

    def _rollback(self) -> None:
        if self._status.can_roll_back:  # the native menu may be a moment out of date
            self._controller.send(Command.ROLLBACK)

    def _skip(self) -> None:
        version = self._status.update_pending
        if version:
            self._send(Command.SKIP, version)

    def _whats_new(self) -> None:
        if self._status.release_url:
            self._open_url(self._status.release_url)

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

    def _open_log_file(self) -> None:
        log_file = self._logs_dir / "trayupdater.log"
        self._open_path(log_file if log_file.is_file() else self._logs_dir)

    def _open_config(self) -> None:
        path = self._config_path
        if path is None:
            return
        if not path.is_file():
            path = path.parent  # no config file yet: show where it goes
            path.mkdir(parents=True, exist_ok=True)
        self._open_path(path)

    def _on_notice_action(self, key: str) -> None:
        actions = {
            announce.OPEN: self._open,
            announce.ROLLBACK: self._rollback,
            announce.DETAILS: self._open_log_file,
            announce.WHATS_NEW: self._whats_new,
        }
        handler = actions.get(key)
        if handler is not None:
            self._action(handler)()

    def _quit(self) -> None:
        self._controller.send(Command.QUIT)
        self.stop()


def _pause_text(status: Status) -> str:
    if status.paused_until is None:
        return "paused until resumed"
    return "paused until " + time.strftime("%H:%M", time.localtime(status.paused_until))


def _clip(text: str, limit: int = MENU_TEXT_LIMIT) -> str:
    text = " ".join(text.split())  # one line: a newline in an error would break the menu
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _app_icon_file() -> Path | None:
    """A PNG of the app icon for notifications, drawn once per user."""
    import platformdirs

    from trayupdater.icons import app_icon

    cache = Path(platformdirs.user_cache_dir("trayupdater", appauthor=False))
    path = cache / "notification-64.png"  # small: the text needs the room
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            app_icon(64).save(path)
    except OSError:
        return None
    return path
