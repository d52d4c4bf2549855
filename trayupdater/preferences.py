"""The user's update controls: skip a version, allow a blocked one again, pause updates.

They live in ``State`` (state.json) so they survive a restart, and only the update worker
applies them (``apply``), like every other state change. ``hold_reason`` is the one
question the worker asks before installing: is the user holding this version back?

- **Skip** ``X``: X is never installed; a newer release is installed as usual (skipping is
  about one version, not a pin). Skipping the version that runs changes nothing.
- **Allow** ``X``: X leaves the blocked list (a version rolled back from) and is no longer
  skipped; the next check may install it.
- **Pause** for N seconds, or until resumed: checks go on (the tray still shows what is
  available), nothing is installed. A pause that has ended is cleared at the next look.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

from trayupdater.errors import TrayUpdaterError
from trayupdater.status import Command
from trayupdater.store import State

MAX_PAUSE_SECONDS = 366 * 24 * 3600.0
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+!_-]{0,63}$")


class PreferenceError(TrayUpdaterError):
    reason = "preferences"


def check_version(value: object) -> str:
    """A version text from a client: one plain token, as the store names folders."""
    if not isinstance(value, str) or not _VERSION.match(value.strip().lstrip("vV")):
        raise PreferenceError(f"not a version: {value!r}")
    return value.strip().lstrip("vV")


def check_pause(value: object) -> float | None:
    """Pause length in seconds from a client; None means until resumed."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PreferenceError(f"pause length must be a number of seconds, got {value!r}")
    if not 1 <= value <= MAX_PAUSE_SECONDS:
        raise PreferenceError(f"pause length must be 1 s to 366 days, got {value:g} s")
    return float(value)


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``2d`` -> seconds (for ``trayupdater pause --for``)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not match:
        raise PreferenceError(f"cannot read {text!r} as a duration (examples: 30m, 1h, 2d)")
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    seconds = check_pause(float(match.group(1)) * factor)
    assert seconds is not None
    return seconds


def apply(
    state: State, command: Command, payload: object, *, now: Callable[[], float] = time.time
) -> str:
    """Apply one update control to ``state``; the outcome in words for the status."""
    if command is Command.SKIP:
        version = check_version(payload)
        if version == state.active:
            raise PreferenceError(f"{version} is the running version; roll back to leave it")
        state.skipped = version
        return f"Skipping {version}; a newer version will be installed as usual"
    if command is Command.ALLOW:
        version = check_version(payload)
        was = version in state.blocked or state.skipped == version
        state.blocked = [v for v in state.blocked if v != version]
        if state.skipped == version:
            state.skipped = None
        return f"{version} is allowed again" if was else f"{version} was not held back"
    if command is Command.PAUSE:
        seconds = check_pause(payload)
        state.paused = True
        state.paused_until = None if seconds is None else now() + seconds
        if seconds is None:
            return "Updates paused until resumed"
        return f"Updates paused until {time.strftime('%H:%M', time.localtime(now() + seconds))}"
    if command is Command.UNPAUSE:
        state.paused, state.paused_until = False, None
        return "Updates resumed"
    raise PreferenceError(f"not an update control: {command}")


def expire(state: State, *, now: Callable[[], float] = time.time) -> bool:
    """End a timed pause that is over; True if the state changed."""
    if state.paused and state.paused_until is not None and now() >= state.paused_until:
        state.paused, state.paused_until = False, None
        return True
    return False


def hold_reason(state: State, version: str, *, now: Callable[[], float] = time.time) -> str | None:
    """Why ``version`` must not be installed now (in words), or None to go ahead."""
    expire(state, now=now)
    if state.paused:
        if state.paused_until is None:
            return f"{version} is available; updates are paused until resumed"
        until = time.strftime("%H:%M", time.localtime(state.paused_until))
        return f"{version} is available; updates are paused until {until}"
    if state.skipped == version:
        return f"{version} is available; skipped as you asked"
    return None
