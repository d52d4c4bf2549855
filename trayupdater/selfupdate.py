"""Replace the app's own executable with a newer release (frozen builds only).

The app's releases are found, picked and verified exactly like the child's (GitHub source,
asset picker, checksums, minisign when a key is set). Then:

1. **Stage** the new build beside the installed one (``trayupdater.new``, or
   ``TrayUpdater.app.new`` for a bundle), fully written and fsynced: the installed
   executable is never written into (a running one cannot be: ETXTBSY on Linux, a sharing
   violation on Windows), so there is never a half-written executable.
2. **Swap** it in with renames, keeping the old one as ``<name>.old``:
   Linux/macOS file: hard-link the running file to ``.old``, ``os.replace`` the new one
   onto it (atomic). Windows: rename the running exe to ``.old`` (allowed while it runs),
   then move the new one in. Folders and ``.app`` bundles: an atomic exchange of the two
   directories where the OS has one (``renameat2``/``renamex_np``), else two renames.
3. **Hand over** (zero downtime, :mod:`handover`): start the new executable with
   ``PYINSTALLER_RESET_ENVIRONMENT=1`` (a fresh PyInstaller instance, not our unpacked
   files) and ``TRAYUPDATER_HANDOVER=port:token``. It connects back over loopback, proves
   the token and names its version; we hand it the proxy's *listening socket* (POSIX: the
   inherited fd; Windows: ``socket.share``). Both processes accept on that one socket for
   a moment: connections queue in the kernel and are served by one or the other, none is
   refused. The successor starts its own child on a new port (ours dies with us: pdeathsig)
   and reports ``ready`` once it serves.
4. **Commit or roll back**: ready within the timeout -> we stop accepting, finish our
   in-flight requests, stop our child (``Handover.retire``), then watch the successor for
   ``probation_seconds`` (:mod:`probation_watch`) before we exit, holding a descriptor of
   the shared socket: if it crashes meanwhile (any exit but code 0), the version is
   blocked, the old build is put back and takes the socket over by the same handover, so
   connections made in between wait in its queue instead of being refused. The
   successor exited, failed, lied about its version or stayed silent before ready -> it is
   stopped, the old executable is renamed back, ``state.json``/``control.json`` are
   restored and we simply keep serving (the old executable never stopped running); the
   version is blocked until a newer one.

Leftovers (``.old``, ``.new``, ``.failed``) are removed by the successor once its
predecessor is gone, or at the next start (Windows cannot delete a running exe).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trayupdater
from trayupdater.config import Config
from trayupdater.disk_space import check_room
from trayupdater.errors import SelfUpdateError, TrayUpdaterError, VerificationError
from trayupdater.handover import HandoverFailed, Predecessor, is_successor
from trayupdater.installation import (
    FileOps,
    Installation,
    Swap,
    _remove,
    find_installation,
    remove_leftovers,
)
from trayupdater.network import Network
from trayupdater.pipeline import download_pace
from trayupdater.platforms import Platform, pick_asset
from trayupdater.probation_watch import watch_successor
from trayupdater.release_model import Asset, Release, parse_version
from trayupdater.selfupdate_stage import unpack_build
from trayupdater.selfupdate_state import STATE_FILE, SelfUpdateState
from trayupdater.sources.github import GitHubSource
from trayupdater.store import atomic_write_text, read_json_file
from trayupdater.verify import check_digest

log = logging.getLogger(__name__)

DEFAULT_ASSET_PATTERN = "trayupdater[_-]{os}[_-]{arch}*"
READY_TIMEOUT = 60.0  # a onefile GTK build unpacks for 4-7 s on a slow disk; be generous

# --- the predecessor's side ---------------------------------------------------------------------


class Handover(Protocol):
    """What the running app lends a self-update (the update worker implements it)."""

    def listening_socket(self) -> socket.socket:
        """The proxy's listening socket, to share with the successor."""

    def retire(self) -> None:
        """The successor serves: stop accepting, finish in-flight requests, stop the child.
        Must not write state.json (the successor owns it now)."""

    def quitting(self) -> bool:
        """A quit was asked for: stop watching the successor on probation and exit."""


@dataclass
class SelfUpdatePlan:
    current: str
    release: Release | None
    asset: Asset | None
    newer: bool = False
    blocked: bool = False

    @property
    def should_install(self) -> bool:
        return self.newer and not self.blocked and self.asset is not None

    @property
    def outcome(self) -> str:
        """Why nothing is installed (or "install")."""
        if self.release is None:
            return "no_release"
        if not self.newer:
            return "up_to_date"
        if self.blocked:
            return "blocked"
        return "no_asset" if self.asset is None else "install"


@dataclass(frozen=True)
class SelfUpdateResult:
    outcome: str  # "up_to_date" | "no_release" | "no_asset" | "blocked" | "replaced"
    current: str
    latest: str | None = None
    message: str = ""


def _exit_process() -> None:
    logging.shutdown()  # flush the log file; os._exit skips atexit handlers
    os._exit(0)


class SelfUpdater:
    """Checks the app's own release source and replaces the running build.

    Runs on the update worker (the one writer of state.json), so nothing else changes the
    app's state while the successor starts. Every collaborator can be injected.
    """

    def __init__(
        self,
        config: Config,
        installation: Installation,
        *,
        source: GitHubSource | None = None,
        platform: Platform | None = None,
        current_version: Callable[[], str] | None = None,
        ops: FileOps | None = None,
        argv: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        ready_timeout: float = READY_TIMEOUT,
        share: Callable[..., bytes] | None = None,
        popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
        exit_process: Callable[[], None] = _exit_process,
    ) -> None:
        if not config.self_update_repo:
            raise SelfUpdateError("self-update needs [app] self_update_repo (owner/name)")
        self.config = config
        self.installation = installation
        self.repo = config.self_update_repo
        self.source = source or GitHubSource(
            self.repo,
            api_url=config.api_url,
            token=config.token,
            network=Network.from_config(config),
        )
        self.platform = platform or Platform(installation.os, Platform.current().arch)
        self.pattern = config.self_update_asset_pattern or DEFAULT_ASSET_PATTERN
        self._current_version = current_version or (lambda: trayupdater.__version__)
        self.ops = ops or FileOps()
        self._predecessor = Predecessor(
            installation,
            list(sys.argv[1:] if argv is None else argv),
            environ=environ,
            ready_timeout=ready_timeout,
            share=share,
            popen=popen,
        )
        self._exit = exit_process
        self.data_dir = config.data_dir
        self.state_path = config.data_dir / STATE_FILE

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> SelfUpdater | None:
        """The self-updater for this process, or None (not frozen, or no self_update_repo)."""
        installation = find_installation()
        if installation is None or not config.self_update_repo:
            return None
        return cls(config, installation, **kwargs)

    # --- deciding ---

    def plan(self) -> SelfUpdatePlan:
        current = self._current_version()
        result = self.source.check(include_prereleases=self.config.channel == "prerelease")
        release = result.release
        plan = SelfUpdatePlan(current=current, release=release, asset=None)
        if release is None:
            return plan
        name = pick_asset(
            [a.name for a in release.assets],
            self.platform,
            repo=self.repo,
            pattern=self.pattern,
            version=release.version_text,
        )
        plan.asset = release.asset(name) if name else None
        current_v = parse_version(current)
        plan.newer = current_v is None or release.version > current_v
        plan.blocked = release.version_text in SelfUpdateState.load(self.state_path).blocked
        return plan

    def check_and_apply(self, handover: Handover) -> SelfUpdateResult:
        """Check; if a newer build exists, install it and hand over to it.

        On success ``handover.retire()`` is called and, after the successor's probation,
        the process exits (this does not return). Raises SelfUpdateError (or the
        pipeline's errors) on failure, after putting everything back.
        """
        plan = self.plan()
        state = SelfUpdateState.load(self.state_path)
        state.last_check = time.time()
        latest = plan.release.version_text if plan.release else None
        state.save(self.state_path)
        if not plan.should_install:
            return SelfUpdateResult(plan.outcome, plan.current, latest)
        assert plan.release is not None and plan.asset is not None
        try:
            staged = self.stage(plan.release, plan.asset)
            outcome = self.apply(staged, plan.release.version_text, handover)
        except TrayUpdaterError as exc:
            state = SelfUpdateState.load(self.state_path)  # apply() may have blocked it
            state.last_error = str(exc)
            state.save(self.state_path)
            raise
        return SelfUpdateResult(outcome, plan.current, latest)

    # --- staging ---

    def stage(self, release: Release, asset: Asset) -> Path:
        """Download, verify and unpack ``asset`` into ``<target>.new``; that path."""
        work = self.data_dir / "selfupdate"
        work.mkdir(parents=True, exist_ok=True)
        # Before any download, the checksums file included.
        limit = self.config.max_download_bytes
        check_room(work, asset.size, asset.name, max_bytes=limit)
        expected = self.source.expected_digest(release, asset)
        if expected is None and self.config.require_checksum:
            raise VerificationError(
                f"{asset.name}: no checksum for the app's own update; refusing to run it"
            )
        result = self.source.fetch(
            release,
            asset,
            work / asset.name,
            max_bytes=self.config.max_download_bytes,
            pace=download_pace(self.config),
        )
        unpack = work / "unpack"
        try:
            if expected is not None:
                check_digest(result.sha256, expected, asset.name)
            else:
                log.warning(
                    "%s: self-update WITHOUT checksum verification (configured)", asset.name
                )
            self.source.verify_signature(release, asset, result.path, self.config.public_key)
            staged = unpack_build(
                result.path,
                asset.name,
                self.installation,
                self.ops,
                unpack=unpack,
                max_total_bytes=self.config.extract_limit(result.path.stat().st_size),
            )
        except OSError as exc:
            raise SelfUpdateError(f"cannot stage {asset.name}: {exc.strerror or exc}") from None
        finally:
            result.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                _remove(unpack, self.ops)
        log.info("staged %s %s at %s", self.repo, release.version_text, staged)
        return staged

    # --- replacing and handing over ---

    def apply(self, staged: Path, version: str, handover: Handover) -> str:
        """Swap ``staged`` in, start it, and commit (retire, probation, exit) or roll back
        (raise); returns only in tests, where exiting is a stand-in."""
        swap = Swap(self.installation, staged, self.ops)
        try:
            swap.apply()
        except OSError as exc:
            with contextlib.suppress(OSError):
                _remove(staged, self.ops)
            raise SelfUpdateError(
                f"cannot replace {self.installation.target}: {exc.strerror or exc}"
            ) from None
        snapshot = self._snapshot()
        try:
            listener = handover.listening_socket()
            self._forget_child()
            proc, channel = self._predecessor.hand_to(listener, version)
        except HandoverFailed as exc:
            self._roll_back(swap, snapshot, version, str(exc))
            raise SelfUpdateError(
                f"self-update to {version} rolled back: {exc}; {version} is blocked"
            ) from None
        except BaseException as exc:  # a bug or Ctrl-C mid-way: never leave the swap behind
            self._roll_back(swap, snapshot, version, f"{type(exc).__name__}: {exc}")
            raise
        self._commit(swap, version)
        with contextlib.suppress(OSError):
            channel.send({"commit": True})
        log.info("self-update: %s serves now (pid %s); retiring", version, proc.pid)
        # Our own hold on the shared socket, past the proxy's close in retire(): should the
        # successor crash, connections wait in its queue for the old build, none is refused.
        standby = _hold(listener)
        try:
            handover.retire()
            verdict = watch_successor(
                proc, version, self.config.probation_seconds, handover.quitting
            )
            channel.close()  # the successor may remove .old once we are gone
            if verdict.crashed:  # {}: no snapshot to restore, the successor's state.json is true
                self._roll_back(swap, {}, version, verdict.reason)
                self._start_old_build(standby)
        finally:
            if standby is not None:
                standby.close()
        self._exit()
        return "rolled_back" if verdict.crashed else "replaced"

    def _start_old_build(self, standby: socket.socket | None) -> None:
        """After a crash on probation: the old build, back in place, takes over the socket
        we held, as a successor would; if it cannot (or we hold none), a normal launch."""
        if standby is not None:
            try:
                _, channel = self._predecessor.hand_to(standby, self._current_version())
            except HandoverFailed as exc:
                log.critical("the old build did not take over: %s; starting it afresh", exc)
                standby.close()  # a normal launch binds the port itself
            else:
                with contextlib.suppress(OSError):
                    channel.send({"commit": True})
                channel.close()
                return
        self._predecessor.relaunch()

    def _roll_back(
        self, swap: Swap, snapshot: dict[Path, bytes | None], version: str, why: str
    ) -> None:
        """The successor is stopped by now: put the old executable and files back."""
        log.error("self-update to %s failed: %s; rolling back", version, why)
        try:
            swap.restore()
        except OSError as exc:
            # Still serving from the old process; only the next start is at risk. Say so.
            log.critical("could not put the old executable back: %s", exc)
            why += f"; restoring the old executable failed: {exc}"
        self._restore(snapshot)
        state = SelfUpdateState.load(self.state_path)
        if version not in state.blocked:
            state.blocked.append(version)
        state.last_error = why
        state.last_result = dict(outcome="rolled_back", version=version, reason=why, at=time.time())
        state.save(self.state_path)

    def _commit(self, swap: Swap, version: str) -> None:
        state = SelfUpdateState.load(self.state_path)
        state.last_error = None
        state.last_result = {
            "outcome": "replaced",
            "version": version,
            "previous": self._current_version(),
            "at": time.time(),
        }
        state.save(self.state_path)

    # --- the app's files the successor rewrites while it starts --------------------------

    def _snapshot(self) -> dict[Path, bytes | None]:
        """state.json and control.json as they are: a rollback puts them back verbatim."""
        saved: dict[Path, bytes | None] = {}
        for name in ("state.json", "control.json"):
            path = self.data_dir / name
            try:
                saved[path] = path.read_bytes()
            except FileNotFoundError:
                saved[path] = None
        return saved

    def _restore(self, snapshot: dict[Path, bytes | None]) -> None:
        for path, data in snapshot.items():
            try:
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    _write_private(path, data)
            except OSError as exc:
                log.error("could not restore %s: %s", path.name, exc)

    def _forget_child(self) -> None:
        """Keep the successor from killing our child as a "stale" one while we still
        serve through it: it starts its own (ours stops when we retire)."""
        path = self.data_dir / "state.json"
        try:
            data = read_json_file(path)
        except (OSError, ValueError):
            return
        if isinstance(data, dict) and data.get("child_pid"):
            data["child_pid"] = None
            data["child_port"] = None
            atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.restore")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _hold(listener: socket.socket) -> socket.socket | None:
    """A second descriptor of ``listener`` (None, logged, if none can be had)."""
    try:
        return listener.dup()
    except OSError as exc:
        log.warning("self-update: cannot keep the listening socket for a rollback: %s", exc)
        return None


def finish_pending_update(installation: Installation | None = None) -> list[str]:
    """At start-up: remove what an earlier self-update left beside the executable.

    Skipped in a successor (the predecessor may still roll back); returns the removed names.
    """
    if is_successor():
        return []
    installation = installation or find_installation()
    if installation is None:
        return []
    removed = remove_leftovers(installation)
    if removed:
        log.info("self-update: removed leftovers %s", ", ".join(removed))
    return removed
