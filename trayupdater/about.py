"""What "About" says: versions and the last check, for the tray and `trayupdater status`."""

from __future__ import annotations

import time

from trayupdater.status import Status


def about_lines(status: Status, *, now: float | None = None) -> list[str]:
    """trayupdater's version, the server's, the latest available and the last check."""
    lines = [f"trayupdater {status.app_version}"]
    state = status.phase.value.replace("_", " ")
    lines.append(f"{status.app_name} {status.active or '(none installed)'} — {state}")
    latest = status.latest or "unknown (not checked yet)"
    if status.latest and status.latest == status.active:
        latest += " (installed)"
    elif status.latest and status.latest in status.blocked:
        latest += " (blocked: rolled back from)"
    elif status.latest and status.latest == status.skipped:
        latest += " (skipped)"
    lines.append(f"Latest available: {latest}")
    lines.append(f"Last check: {when(status.last_check, now=now)}")
    if status.paused:
        until = "resumed" if status.paused_until is None else when(status.paused_until, now=now)
        lines.append(f"Updates paused until {until}")
    return lines


def when(timestamp: float | None, *, now: float | None = None) -> str:
    """``14:05`` today, ``3 Mar 14:05`` on another day, ``never`` for None."""
    if timestamp is None:
        return "never"
    local = time.localtime(timestamp)
    today = time.localtime(time.time() if now is None else now)
    if local[:3] == today[:3]:
        return time.strftime("%H:%M", local)
    return time.strftime("%d %b %H:%M", local).lstrip("0")
