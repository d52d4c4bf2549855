"""Open a web page, a folder or a file with the desktop's handler, and say when it failed.

``xdg-open`` with no handler exits 3 and shows nothing, and ``webbrowser.open`` reports
success as soon as it started ``xdg-open``: so on Linux (and macOS) the opener is started
directly, and its exit status is watched in the background; a failure reaches the
``on_failure`` callback with the path or URL, which the tray turns into a notification.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from trayupdater.errors import TrayUpdaterError

log = logging.getLogger(__name__)

OPENER_TIMEOUT = 60.0  # an opener still running by then has shown something


class OpenError(TrayUpdaterError):
    reason = "open"


def open_target(target: str | Path, on_failure: Callable[[str], None] | None = None) -> None:
    """Show ``target`` (an http(s) URL, a folder or a file) with the desktop's handler.

    Raises OpenError if the opener cannot even start; a later failure (exit status) goes
    to ``on_failure`` as one sentence naming ``target``.
    """
    text = os.fspath(target)
    if sys.platform == "win32":
        try:
            os.startfile(text)  # type: ignore[attr-defined]  # noqa: S606 - a URL or a folder
        except OSError as exc:
            raise OpenError(f"could not open {text}: {exc.strerror or exc}") from None
        return
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    try:
        proc = subprocess.Popen(
            [opener, text],
            env=desktop_env(),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise OpenError(f"could not open {text}: {opener} is missing ({exc.strerror})") from None

    def watch() -> None:
        # Also reaps it: no zombie is left behind for the app's lifetime.
        try:
            code = proc.wait(OPENER_TIMEOUT)
        except subprocess.TimeoutExpired:
            return
        if code != 0:
            log.warning("%s %s exited with %s", opener, text, code)
            if on_failure is not None:
                on_failure(f"Could not open {text}: {opener} found no program for it (exit {code})")

    threading.Thread(target=watch, name="opener", daemon=True).start()


def open_folder(path: Path, on_failure: Callable[[str], None] | None = None) -> None:
    """Show a folder in the file manager (created first: opening a missing one fails)."""
    path.mkdir(parents=True, exist_ok=True)
    open_target(path, on_failure)


def desktop_env() -> dict[str, str]:
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
