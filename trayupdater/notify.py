"""Desktop notifications with action buttons where the OS has them, pystray's otherwise.

pystray's ``notify()`` shows a title and a text, nothing to click. desktop-notifier
(org.freedesktop.Notifications on Linux, UNUserNotificationCenter on macOS, toasts on
Windows) adds buttons such as "Open" or "Roll back", so a notification can be acted on
where it is read. It is asyncio-based: one daemon thread runs its event loop, and
``notify`` hands each notification over with a deadline, so a missing or hung
notification daemon costs a log line, never a stuck tray. Where desktop-notifier is not
installed or has no real backend (macOS outside an app bundle), the pystray icon's own
notify is the fallback.
"""

from __future__ import annotations

import asyncio
import html
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from trayupdater.shown import printable

log = logging.getLogger(__name__)

APP_NAME = "TrayUpdater"
SEND_TIMEOUT = 5.0

Fallback = Callable[[str, str], None]  # (message, title), as pystray's Icon.notify
# freedesktop notification servers read the body as markup (body-markup), and both paths
# here reach them on Linux: a release note's <a href> would be a link, <img> a fetch.
BODY_IS_MARKUP = sys.platform.startswith("linux")


def _body(text: str) -> str:
    """A notification body from text that may come from a release: plain text, shown so."""
    text = printable(text)
    return html.escape(text, quote=False) if BODY_IS_MARKUP else text


class Notifier:
    """Sends notifications; ``on_action(key)`` runs when one of their buttons is pressed."""

    def __init__(
        self,
        fallback: Fallback,
        *,
        on_action: Callable[[str], None],
        labels: dict[str, str],
        icon: Path | None = None,
        rich: bool = True,
        app_name: str = APP_NAME,
    ) -> None:
        self._fallback = fallback
        self._on_action = on_action
        self._labels = labels
        self._app_name = app_name
        self._icon = icon
        self._loop: asyncio.AbstractEventLoop | None = None
        self._api: Any = None
        self.backend = "pystray"
        if rich:
            self._start_rich()

    def _start_rich(self) -> None:
        try:
            from desktop_notifier import DesktopNotifier, Icon
            from desktop_notifier.main import get_backend_class
        except ImportError as exc:
            log.info("desktop-notifier not available (%s): notifications without buttons", exc)
            return
        backend = get_backend_class()
        if backend.__name__ == "DummyNotificationCenter":
            log.info("desktop-notifier has no backend here: notifications without buttons")
            return
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="notifier", daemon=True).start()
        icon = Icon(path=self._icon) if self._icon else None

        async def create() -> Any:
            return DesktopNotifier(app_name=self._app_name, app_icon=icon)

        try:
            self._api = asyncio.run_coroutine_threadsafe(create(), loop).result(SEND_TIMEOUT)
        except Exception:
            log.warning("desktop-notifier failed to start; using pystray", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
            return
        self._loop = loop
        self.backend = f"desktop-notifier {backend.__name__}"

    def notify(self, title: str, message: str, actions: Sequence[str] = ()) -> None:
        """Show a notification; returns at once and never raises (notifications are a
        courtesy: the caller may be the update worker, which must not wait on a daemon)."""
        title, message = printable(title, newlines=False), _body(message)
        if self._loop is None:
            self._plain(title, message)
            return
        coro = asyncio.wait_for(self._send(title, message, actions), SEND_TIMEOUT)
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)

        def done(future: Any) -> None:
            error = future.exception()
            if isinstance(error, (asyncio.TimeoutError, FutureTimeout)):
                log.warning("notification %r: no answer from the notification service", message)
            elif error is not None:
                log.warning("notification %r failed (%r); trying pystray's", message, error)
                self._plain(title, message)

        future.add_done_callback(done)

    async def _send(self, title: str, message: str, actions: Sequence[str]) -> None:
        from desktop_notifier import Button

        buttons = [
            Button(title=self._labels.get(key, key), on_pressed=self._pressed(key))
            for key in actions
        ]
        await self._api.send(title=title, message=message, buttons=buttons)

    def _pressed(self, key: str) -> Callable[[], None]:
        def run() -> None:
            try:
                self._on_action(key)
            except Exception:
                log.exception("notification action %s failed", key)

        return run

    def _plain(self, title: str, message: str) -> None:
        try:
            # No app name field in pystray's notifications: the title carries it.
            named = title if title.startswith(self._app_name) else f"{self._app_name}: {title}"
            self._fallback(message, named)
        except Exception:
            log.warning("could not show notification %r", message, exc_info=True)

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
