"""What the app is doing, as one immutable snapshot, and the commands it accepts.

The update worker publishes a new ``Status`` on every change; the tray, the CLI (through
the control endpoint) and notifications only read these snapshots and send ``Command``s.
That one-way flow is what keeps the UI free of races with the worker.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import trayupdater
from trayupdater.store import version_key


class Phase(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"  # a version serves through the proxy
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    UPDATING = "updating"  # starting/health-checking/swapping to a new version
    ROLLING_BACK = "rolling_back"
    RESTARTING = "restarting"  # the child crashed; restarting it with back-off
    ERROR = "error"  # nothing serves (no version could be started)
    NO_VERSION = "no_version"  # first run, nothing installed yet
    STOPPING = "stopping"


class Command(str, enum.Enum):
    CHECK = "check"
    ROLLBACK = "rollback"
    RESUME = "resume"  # forget blocked versions: allow updating to them again
    QUIT = "quit"
    # Update controls (preferences.py); SKIP and ALLOW carry a version, PAUSE seconds or None.
    SKIP = "skip"  # never install this version; a newer one is installed as usual
    ALLOW = "allow"  # take one version off the blocked list (or un-skip it)
    PAUSE = "pause"  # install nothing until the pause ends (or UNPAUSE)
    UNPAUSE = "unpause"


@dataclass(frozen=True)
class Status:
    app_name: str = "simple-server"  # the child's name as users know it (repo name)
    phase: Phase = Phase.STARTING
    active: str | None = None
    previous: str | None = None  # what "Roll back" would go to; None: nothing to roll back to
    latest: str | None = None
    blocked: tuple[str, ...] = ()
    message: str = ""  # last outcome in words: "Up to date", "Updated to 1.3.0", an error
    error: str | None = None  # set while the last operation failed
    progress: float | None = None  # 0..1 during a download
    proxy_url: str = "http://127.0.0.1:8080"
    last_check: float | None = None
    rollback_reason: str | None = None  # why "Roll back" is disabled, when it is
    # The latest release as the last check saw it: its page and the first line of its notes.
    release_url: str | None = None
    release_notes: str = ""
    download_done: int | None = None  # bytes so far of the running download
    download_total: int | None = None
    skipped: str | None = None  # "Skip this version": not installed, newer ones are
    paused: bool = False  # "Pause updates": nothing is installed while set
    paused_until: float | None = None  # time.time() the pause ends; None: until resumed
    app_version: str = field(default_factory=lambda: trayupdater.__version__)
    # What the publisher's rollout or recall means here: "1.2.0 is rolling out: 25 % of
    # machines so far", "1.2.0 was recalled by the publisher; …". None: nothing to say.
    notice: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def headline(self) -> str:
        """The tray's status line: ``simple-server 1.2.0 — running``."""
        version = f" {self.active}" if self.active else ""
        if self.phase is Phase.DOWNLOADING and self.progress is not None:
            what = f"downloading {self.latest or ''} {self.progress:.0%}".replace("  ", " ")
            if self.download_total:
                what += f" ({megabytes(self.download_done or 0, self.download_total)})"
        elif self.phase is Phase.ERROR and self.error:
            what = f"error: {self.error}"
        else:
            what = self.phase.value.replace("_", " ")
        return f"{self.app_name}{version} — {what}"

    @property
    def serving(self) -> bool:
        """Does a version answer through the proxy right now?"""
        return self.phase in (Phase.RUNNING, Phase.CHECKING, Phase.DOWNLOADING, Phase.UPDATING)

    @property
    def update_pending(self) -> str | None:
        """A newer release that is not installed and not blocked: what "Skip" would skip."""
        if not self.latest or self.latest == self.active or self.latest in self.blocked:
            return None
        if self.active and version_key(self.latest) <= version_key(self.active):
            return None
        return self.latest

    @property
    def can_roll_back(self) -> bool:
        return self.previous is not None and self.phase in (Phase.RUNNING, Phase.ERROR)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["blocked"] = list(self.blocked)
        data["headline"] = self.headline
        data["can_roll_back"] = self.can_roll_back
        return data


def megabytes(done: int, total: int) -> str:
    """``3.1 / 6.3 MB``: download progress in words."""
    return f"{done / 1e6:.1f} / {total / 1e6:.1f} MB"


class Controller(Protocol):
    """What a front end (tray, control endpoint) needs from the running app."""

    def status(self) -> Status: ...

    def send(self, command: Command, payload: object = None) -> None:
        """Queue a command (with its version or seconds) for the update worker; returns at once."""

    def subscribe(self, callback: Any) -> None:
        """``callback(status)`` on every change, called from the worker thread."""
