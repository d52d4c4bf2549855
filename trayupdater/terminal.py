"""What the command line prints about a running app.

Status lines carry text from elsewhere (a release's notes, a server's error message), so
every line goes through :func:`say`, which escapes control characters: none can retitle
or clear the terminal (:mod:`trayupdater.shown`).
"""

from __future__ import annotations

import json
from typing import Any

from trayupdater import __version__
from trayupdater.about import when
from trayupdater.shown import printable


def say(text: object, **kwargs: Any) -> None:
    """Print a line that may hold text from a release source or a server: control
    characters escaped, so none can retitle or clear the terminal."""
    print(printable(str(text)), **kwargs)


def print_status(status: dict[str, Any], *, as_json: bool) -> int:
    """A running app's status, as `trayupdater status` shows it; 1 if it reports an error."""
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    say(status.get("headline", ""))
    if status.get("message"):
        say(status["message"])
    notice = status.get("notice")
    if notice and notice not in (status.get("message") or ""):
        say(notice)
    if status.get("blocked"):
        say("blocked versions: " + ", ".join(status["blocked"]))
    print_controls(status)
    say(
        f"trayupdater {status.get('app_version') or __version__}; latest available: "
        f"{status.get('latest') or 'unknown'}; last check: {when(status.get('last_check'))}"
    )
    return 1 if status.get("error") else 0


def print_controls(status: dict[str, Any]) -> None:
    if status.get("skipped"):
        say(f"skipped version: {status['skipped']} (trayupdater allow {status['skipped']})")
    if status.get("paused"):
        until = status.get("paused_until")
        say(f"updates paused until {'resumed' if until is None else when(until)}")
