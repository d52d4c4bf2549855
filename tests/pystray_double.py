"""A pystray icon that runs without a display, for driving TrayApp in unit tests.

pystray's own "dummy" backend is the abstract base: its run() raises. This subclass
implements the platform hooks with an Event and records what a real backend would show
(image, title, menu rebuilds, notifications). Import this module before anything imports
pystray: the backend is chosen once, at pystray's import, from PYSTRAY_BACKEND.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYSTRAY_BACKEND", "dummy")

import threading
from typing import Any

from pystray import _base


class RecordingIcon(_base.Icon):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopped = threading.Event()
        self.ready = threading.Event()
        self.shown = threading.Event()
        self.notifications: list[tuple[str, str | None]] = []
        self.images: list[Any] = []
        self.titles: list[str] = []
        self.menu_updates = 0
        self.notify_error: Exception | None = None  # set to make notify() fail like a backend

    # --- platform hooks ---

    def _run(self) -> None:
        self._mark_ready()
        self.ready.set()
        self.stopped.wait()

    def _stop(self) -> None:
        self.stopped.set()

    def _show(self) -> None:
        self.shown.set()

    def _hide(self) -> None:
        self.shown.clear()

    def _update_icon(self) -> None:
        self.images.append(self.icon)
        self._icon_valid = True

    def _update_title(self) -> None:
        self.titles.append(self.title)

    def _update_menu(self) -> None:
        self.menu_updates += 1

    def _notify(self, message: str, title: str | None = None) -> None:
        if self.notify_error is not None:
            raise self.notify_error
        self.notifications.append((message, title))

    def _remove_notification(self) -> None:
        pass

    # --- what a user sees and does ---

    def items(self) -> list[Any]:
        """The visible menu items, evaluated now (separators included)."""
        return list(self.menu)

    def texts(self) -> list[str]:
        return [item.text for item in self.menu if item is not _base.Menu.SEPARATOR]

    def item(self, prefix: str) -> Any:
        """The visible item with exactly this text, else the one whose text starts with it."""
        matches = [item for item in self.menu if item.text == prefix] or [
            item for item in self.menu if item.text.startswith(prefix)
        ]
        assert len(matches) == 1, f"{prefix!r} matches {[i.text for i in matches]}"
        return matches[0]

    def click(self, prefix: str) -> None:
        """Activate a menu item as a backend does: only if enabled, then refresh the menu."""
        item = self.item(prefix)
        assert item.enabled, f"{item.text!r} is disabled"
        self._handler(item)()
