"""Which release this installation takes: the publisher's phased rollout and recall.

A publisher signs, for each version, the share of installations that may take it (a
percent, or a schedule of percents over time) and whether it is recalled
(:mod:`trayupdater.tuf_format`). No server counts anything and nothing is reported back:
each installation decides for itself, from an *install id* drawn at random once and kept
in its data folder (``install-id``, mode 0600), which is never sent anywhere::

    bucket(id, V) = SHA-256("trayupdater-rollout", id, V) as a number in [0, 100)
    an installation takes V when bucket(id, V) < P

The hash is uniform, so P % of a fleet take V. It is fixed for a given (id, version), so a
machine stays in or out while P holds and a rising P only adds machines. It differs between
versions, so the same machines are not the first every time. ``P = 0`` halts a rollout: no
further machine takes V. An installation outside the newest version's rollout takes the
newest one it is inside of (a version published to everyone, typically), never an older one
than it runs. A user-started check may take a version held back for this machine
(``[source] manual_check_bypasses_rollout``, default true); the timer never does.

A recalled version is never taken. An installation that runs it rolls back to the version
it ran before (the update worker does that with the zero-failure switch of
:meth:`~trayupdater.serving.Serving.rollback`), and installed recalled versions are blocked;
if the publisher lifts the recall, blocks that came from it are lifted too
(:func:`note_recalls`). With nothing older installed, the version keeps running, and the
status says it was recalled.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from packaging.version import InvalidVersion, Version

from trayupdater.release_model import Release
from trayupdater.store import State

log = logging.getLogger(__name__)

ID_FILE = "install-id"
_ID = re.compile(r"[0-9a-f]{32}")
_BUCKET_BITS = 53  # as many as a float holds exactly: the bucket never rounds up to 100


# --- the install id ---------------------------------------------------------------------------


def install_id(data_dir: Path) -> str:
    """This installation's id: read from ``data_dir``, or drawn now and kept there.

    Two processes drawing at once agree: the new file is linked into place only if none is
    there yet, so the loser reads the winner's. A damaged file is replaced with a new id.
    """
    path = data_dir / ID_FILE
    found = _read_id(path)
    if found is not None:
        return found
    # Damaged means there and unreadable *now*; decided before drawing, because by the time
    # our file is written another process may have linked a good one into place.
    damaged = path.exists() or path.is_symlink()
    data_dir.mkdir(parents=True, exist_ok=True)
    drawn = secrets.token_hex(16)
    fd, tmp = tempfile.mkstemp(prefix=".install-id.", dir=data_dir)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(drawn + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if damaged and _read_id(path) is None:
            log.warning("%s is damaged; drawing a new install id", path)
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileExistsError):  # another process was first: use its
                os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return _read_id(path) or drawn


def _read_id(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            text = fh.read(64).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return text if _ID.fullmatch(text) else None


def bucket(install_id: str, version: str) -> float:
    """Where this installation stands for ``version``: uniform in [0, 100)."""
    try:
        key = str(Version(version.lstrip("vV")))  # v1.2.0 and 1.2.0 are one version
    except InvalidVersion:
        key = version
    digest = hashlib.sha256(f"trayupdater-rollout\n{install_id}\n{key}".encode()).digest()
    number = int.from_bytes(digest[:8], "big") >> (64 - _BUCKET_BITS)
    return number * 100 / 2**_BUCKET_BITS


def takes(install_id: str, version: str, percent: float) -> bool:
    return percent >= 100 or (percent > 0 and bucket(install_id, version) < percent)


# --- choosing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldBack:
    """A newer release whose rollout has not reached this installation."""

    release: Release
    percent: float
    next_change: tuple[float, float] | None = None  # (when, percent) of a schedule's next step

    @property
    def notice(self) -> str:
        version = self.release.version_text
        if self.percent <= 0:
            text = f"{version} is held back by the publisher (its rollout is at 0 %)"
        else:
            text = f"{version} is rolling out: {self.percent:g} % of machines so far"
        if self.next_change is not None:
            when, percent = self.next_change
            try:
                day = datetime.fromtimestamp(when, timezone.utc)
            except (ValueError, OverflowError, OSError):  # beyond what a datetime can show
                text += f" ({percent:g} % later)"
            else:
                text += f" ({percent:g} % from {day:%Y-%m-%d %H:%M} UTC)"
        return text


@dataclass(frozen=True)
class Choice:
    release: Release | None  # the newest release this installation may take now
    held: HeldBack | None = None  # the newest one it may not take yet, if newer


def choose(
    releases: Iterable[Release],
    *,
    install_id: Callable[[], str],
    now: float,
    bypass: bool = False,
) -> Choice:
    """The newest release that is not recalled and whose rollout includes this installation
    (any rollout when ``bypass``). ``install_id`` is called only when a rollout below 100 %
    has to be looked at, so installations of a source without rollouts never draw one."""
    held: HeldBack | None = None
    for release in sorted(releases, key=lambda r: r.version, reverse=True):
        if release.recalled:
            continue
        rollout = release.rollout
        percent = 100.0 if rollout is None else rollout.percent_at(now)
        if bypass or _takes_lazily(install_id, release.version_text, percent):
            return Choice(release, held)
        if held is None:
            upcoming = rollout.next_change(now) if rollout is not None else None
            held = HeldBack(release, percent, upcoming)
    return Choice(None, held)


def _takes_lazily(install_id: Callable[[], str], version: str, percent: float) -> bool:
    if percent >= 100:
        return True
    return takes(install_id(), version, percent)


def recall_reason(version: str) -> str:
    return f"{version} was recalled by the publisher"


def kept_notice(version: str) -> str:
    return f"{recall_reason(version)}; nothing older is installed, so it keeps running"


# --- recalls and the state ---------------------------------------------------------------------


def note_recalls(state: State, releases: Sequence[Release], installed: Iterable[str]) -> bool:
    """Block installed versions the publisher recalled (the active one is blocked by its
    rollback), and lift blocks that came from a recall the publisher has since lifted.
    Changes ``state`` in place; True if it changed (the caller saves)."""
    recalled = {r.version_text for r in releases if r.recalled}
    reinstated = {r.version_text for r in releases if not r.recalled}
    changed = False
    here = set(installed) | ({state.active} if state.active else set())
    for version in sorted(recalled & here):
        if version not in state.recalled and (
            version not in state.blocked or version == state.active
        ):
            state.recalled.append(version)  # a block of ours: lifted with the recall
            changed = True
        if version != state.active and version not in state.blocked:
            state.blocked.append(version)
            changed = True
    for version in [v for v in state.recalled if v in reinstated]:
        state.recalled.remove(version)
        if version in state.blocked:
            state.blocked.remove(version)
        log.info("the publisher lifted the recall of %s; it may be taken again", version)
        changed = True
    return changed
