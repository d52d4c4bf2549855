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
3. **Hand over** (zero downtime): start the new executable with
   ``PYINSTALLER_RESET_ENVIRONMENT=1`` (a fresh PyInstaller instance, not our unpacked
   files) and ``TRAYUPDATER_HANDOVER=port:token``. It connects back over loopback, proves
   the token and names its version; we hand it the proxy's *listening socket* (POSIX: the
   inherited fd; Windows: ``socket.share``). Both processes accept on that one socket for
   a moment: connections queue in the kernel and are served by one or the other, none is
   refused. The successor starts its own child on a new port (ours dies with us: pdeathsig)
   and reports ``ready`` once it serves.
4. **Commit or roll back**: ready within the timeout -> we stop accepting, finish our
   in-flight requests, stop our child and exit (``Handover.retire``). The successor exited,
   failed, lied about its version or stayed silent -> it is stopped, the old executable
   is renamed back, ``state.json``/``control.json`` are restored and we simply keep serving
   (the old executable never stopped running); the version is blocked until a newer one.

Leftovers (``.old``, ``.new``, ``.failed``) are removed by the successor once its
predecessor is gone, or at the next start (Windows cannot delete a running exe).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import hmac
import json
import logging
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trayupdater
from trayupdater.config import Config
from trayupdater.download import download
from trayupdater.errors import TrayUpdaterError, VerificationError
from trayupdater.extract import extract, find_executable
from trayupdater.platforms import Platform, pick_asset
from trayupdater.release_model import Asset, Release, parse_version
from trayupdater.releases import GitHubSource
from trayupdater.store import atomic_write_text
from trayupdater.verify import check_digest, find_expected_digest

log = logging.getLogger(__name__)

ENV_HANDOVER = "TRAYUPDATER_HANDOVER"
DEFAULT_ASSET_PATTERN = "trayupdater[_-]{os}[_-]{arch}*"
STATE_FILE = "selfupdate.json"
READY_TIMEOUT = 60.0  # a onefile GTK build unpacks for 4-7 s on a slow disk; be generous
STOP_TIMEOUT = 15.0
_MAX_LINE = 64 * 1024
_SUFFIXES = (".old", ".new", ".failed")
READY_PHASES = ("running", "no_version")  # Status.phase values in which the app serves

# Set by take_handover(): this process is a successor on trial, so what its predecessor
# keeps for a rollback (``.old``) must stay until the predecessor has committed.
_started_by_handover = False


class SelfUpdateError(TrayUpdaterError):
    reason = "self_update"


# --- where the running app lives ------------------------------------------------------------


@dataclass(frozen=True)
class Installation:
    """What a self-update replaces (``target``) and what it then starts (``executable``).

    ``kind`` is ``file`` (a onefile executable: target is the executable), ``folder`` (a
    onedir build: target is its folder) or ``bundle`` (a macOS ``.app``).
    """

    target: Path
    executable: Path
    kind: str
    os: str  # "linux" | "darwin" | "windows"

    def __post_init__(self) -> None:
        if self.kind not in ("file", "folder", "bundle"):
            raise SelfUpdateError(f"unknown installation kind {self.kind!r}")
        if self.os not in ("linux", "darwin", "windows"):
            raise SelfUpdateError(f"unknown OS {self.os!r}")
        if self.kind != "file" and not self.executable.is_relative_to(self.target):
            raise SelfUpdateError(f"{self.executable} is not inside {self.target}")

    def sibling(self, suffix: str) -> Path:
        return self.target.with_name(self.target.name + suffix)

    @property
    def inner_executable(self) -> Path:
        """The executable's path relative to the target folder (``file``: its name)."""
        if self.kind == "file":
            return Path(self.executable.name)
        return self.executable.relative_to(self.target)


def find_installation(
    *,
    frozen: bool | None = None,
    executable: str | None = None,
    meipass: str | None = None,
    os_name: str | None = None,
) -> Installation | None:
    """The running app's installation, or None when running from source (nothing to swap).

    The keywords default to this process (``sys.frozen``, ``sys.executable``,
    ``sys._MEIPASS``, the current OS) so every OS's layout can be tested anywhere.
    """
    frozen = bool(getattr(sys, "frozen", False)) if frozen is None else frozen
    if not frozen:
        return None
    # Resolved: started through a symlink (~/.local/bin/trayupdater), the real file or
    # folder is what gets replaced, never the link.
    exe = Path(executable or sys.executable).resolve()
    meipass = meipass if meipass is not None else getattr(sys, "_MEIPASS", "")
    os_name = os_name or Platform.current().os
    for parent in exe.parents:  # TrayUpdater.app/Contents/MacOS/trayupdater
        if parent.suffix == ".app" and os_name == "darwin":
            return Installation(parent, exe, "bundle", os_name)
    unpacked = Path(meipass).resolve() if meipass else None
    if unpacked is not None and unpacked in (exe.parent, exe.parent / "_internal"):
        # onedir: the libraries sit beside the executable (6.x: in _internal/); swapping
        # the executable alone would run new code on old libraries.
        return Installation(exe.parent, exe, "folder", os_name)
    return Installation(exe, exe, "file", os_name)


# --- file system operations (injectable: tests give the Windows semantics on Linux) -----------


def _native_exchange() -> Callable[[Path, Path], None] | None:
    """Atomically swap two paths: renameat2(RENAME_EXCHANGE) / renamex_np(RENAME_SWAP)."""
    libc_name = ctypes.util.find_library("c")
    if os.name != "posix" or not libc_name:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        fn = libc.renamex_np
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]

        def call(a: Path, b: Path) -> int:
            return int(fn(os.fsencode(a), os.fsencode(b), 0x2))  # RENAME_SWAP

    elif sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        fn = libc.renameat2
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

        def call(a: Path, b: Path) -> int:
            return int(fn(-100, os.fsencode(a), -100, os.fsencode(b), 0x2))  # AT_FDCWD, EXCHANGE

    else:
        return None

    def exchange(a: Path, b: Path) -> None:
        if call(a, b) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(a))

    return exchange


@dataclass
class FileOps:
    """The file-system calls a swap makes. Defaults are the real ones for this OS."""

    replace: Callable[[Path, Path], None] = os.replace
    rename: Callable[[Path, Path], None] = os.rename
    link: Callable[[Path, Path], None] = os.link
    unlink: Callable[[Path], None] = os.unlink
    rmtree: Callable[[Path], None] = shutil.rmtree
    exchange: Callable[[Path, Path], None] | None = field(default_factory=_native_exchange)


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path, ops: FileOps) -> None:
    if path.is_dir() and not path.is_symlink():
        ops.rmtree(path)
    elif path.exists() or path.is_symlink():
        ops.unlink(path)


class Swap:
    """Puts a staged build in the installation's place; ``restore`` undoes it."""

    def __init__(self, installation: Installation, staged: Path, ops: FileOps) -> None:
        self.inst = installation
        self.staged = staged
        self.ops = ops
        self.backup = installation.sibling(".old")
        self.applied = False
        if installation.kind != "file" and installation.os == "windows":
            # A running program's folder cannot be renamed on Windows.
            raise SelfUpdateError("self-update on Windows needs the onefile build")

    def apply(self) -> None:
        target, backup = self.inst.target, self.backup
        try:
            _remove(backup, self.ops)  # an older leftover; on Windows it may still run
        except OSError as exc:
            raise SelfUpdateError(
                f"cannot remove the leftover {backup.name} ({exc.strerror or exc}); "
                "will retry at the next check"
            ) from None
        if self.inst.kind == "file" and self.inst.os != "windows":
            self._apply_posix_file()
        elif self.inst.kind == "file":
            self._apply_windows_file()
        else:
            self._apply_folder()
        self.applied = True
        with contextlib.suppress(OSError):
            _fsync_dir(target.parent)

    def _apply_posix_file(self) -> None:
        # The running file stays where it is (a hard link) until the atomic replace.
        try:
            self.ops.link(self.inst.target, self.backup)
        except OSError:
            shutil.copy2(self.inst.target, self.backup)  # no hard links on this file system
        self.ops.replace(self.staged, self.inst.target)

    def _apply_windows_file(self) -> None:
        # A running exe can be renamed but neither overwritten nor deleted.
        self.ops.rename(self.inst.target, self.backup)
        try:
            self.ops.replace(self.staged, self.inst.target)
        except OSError:
            self.ops.rename(self.backup, self.inst.target)
            raise

    def _apply_folder(self) -> None:
        target, staged, backup = self.inst.target, self.staged, self.backup
        if self.ops.exchange is not None:
            try:
                self.ops.exchange(staged, target)
            except OSError as exc:
                log.info("atomic exchange unavailable (%s); using two renames", exc)
            else:
                self.ops.rename(staged, backup)  # ``staged`` now holds the old build
                return
        self.ops.rename(target, backup)
        try:
            self.ops.rename(staged, target)
        except OSError:
            self.ops.rename(backup, target)
            raise

    def restore(self) -> None:
        """Put the old build back (the successor has exited). Safe to call twice."""
        if not self.applied:
            return
        target, backup = self.inst.target, self.backup
        failed = self.inst.sibling(".failed")
        if self.inst.kind == "file":
            self.ops.replace(backup, target)
        else:
            _remove(failed, self.ops)
            if self.ops.exchange is not None:
                try:
                    self.ops.exchange(backup, target)
                except OSError:
                    pass
                else:
                    self.ops.rename(backup, failed)
                    self._discard(failed)
                    self.applied = False
                    return
            self.ops.rename(target, failed)
            self.ops.rename(backup, target)
            self._discard(failed)
        self.applied = False
        with contextlib.suppress(OSError):
            _fsync_dir(target.parent)

    def _discard(self, path: Path) -> None:
        try:
            _remove(path, self.ops)
        except OSError as exc:
            log.warning("could not remove %s: %s", path, exc)


def remove_leftovers(installation: Installation, ops: FileOps | None = None) -> list[str]:
    """Delete ``.old``/``.new``/``.failed`` beside the installation; what was removed.

    Called at start-up (no update can be in flight then) and by a successor once its
    predecessor has exited. A file still in use (Windows) stays for the next start.
    """
    ops = ops or FileOps()
    removed = []
    for suffix in _SUFFIXES:
        path = installation.sibling(suffix)
        if not (path.exists() or path.is_symlink()):
            continue
        try:
            _remove(path, ops)
            removed.append(path.name)
        except OSError as exc:
            log.info("leftover %s stays for now: %s", path.name, exc)
    return removed


# --- the handover channel: one JSON object per line over loopback --------------------------------


class _Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    def send(self, message: Mapping[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def recv(self, timeout: float) -> dict[str, Any] | None:
        """The next message; None if none came within ``timeout``; EOFError when closed."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                return None
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("handover channel closed")
            self._buf += chunk
            if len(self._buf) > _MAX_LINE:
                raise EOFError("handover message too long")
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            raise EOFError("handover message is not JSON") from None
        if not isinstance(message, dict):
            raise EOFError("handover message is not an object")
        return message

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _grant(listener: socket.socket, os_name: str, pid: int, share: Callable[..., bytes]) -> dict:
    """How the successor gets our listening socket: its inherited fd, or WSA share bytes."""
    if os_name == "windows":
        return {"share": base64.b64encode(share(listener, pid)).decode()}
    return {"fd": listener.fileno()}


def _socket_from_grant(
    grant: Mapping[str, Any], fromshare: Callable[[bytes], socket.socket]
) -> socket.socket:
    if "fd" in grant:
        fd = int(grant["fd"])
        os.set_inheritable(fd, False)  # ours now; it must not leak into our children
        return socket.socket(fileno=fd)
    if "share" in grant:
        return fromshare(base64.b64decode(grant["share"]))
    raise SelfUpdateError(f"handover: the predecessor sent no socket ({sorted(grant)})")


class Successor:
    """The new process's side of a handover: the socket it got and its health report."""

    def __init__(
        self,
        channel: _Channel,
        sock: socket.socket,
        predecessor_pid: int,
        *,
        installation: Installation | None = None,
    ) -> None:
        self.socket = sock
        self.predecessor_pid = predecessor_pid
        self._channel = channel
        self._installation = installation
        self._reported = threading.Event()
        self._lock = threading.Lock()

    def report_ready(self) -> None:
        """Tell the predecessor we serve; it stops and exits. Only the first report counts."""
        if self._report({"ready": True}):
            threading.Thread(target=self._await_commit, name="handover", daemon=True).start()

    def report_failed(self, why: str) -> None:
        self._report({"failed": why})

    def serve_when_ready(
        self,
        controller: Any,
        start_serving: Callable[[], None],
        ready_phases: Sequence[str] = READY_PHASES,
    ) -> None:
        """Once ``controller`` reaches a serving phase: ``start_serving()`` (start the proxy
        on the inherited socket), then report ready; report failed if it errors instead.

        The proxy must not accept before a backend is set, or the requests it takes from
        the shared socket would get 503 while the predecessor could have served them.
        ``controller`` is the update worker (``subscribe`` + ``status``): subscribing before
        reading the current status means no change can slip between the two.
        """
        started = threading.Event()
        lock = threading.Lock()

        def on_status(status: Any) -> None:
            if self._reported.is_set():
                return  # ready or failed: either way the decision is the predecessor's now
            phase = getattr(status.phase, "value", status.phase)
            if phase in ready_phases:
                with lock:
                    if started.is_set():
                        return
                    started.set()
                try:
                    start_serving()
                except Exception as exc:
                    log.exception("handover: cannot serve on the inherited socket")
                    self.report_failed(f"cannot serve: {exc}")
                    return
                self.report_ready()
            elif phase == "error" and not started.is_set():
                self.report_failed(getattr(status, "error", None) or "error")

        controller.subscribe(on_status)
        on_status(controller.status())

    def _report(self, message: dict[str, Any]) -> bool:
        """Send the one report of this handover; False if one was sent already or it failed."""
        with self._lock:
            if self._reported.is_set():
                return False
            self._reported.set()
        try:
            self._channel.send(message)
        except OSError as exc:
            log.warning("handover: cannot report to the predecessor: %s", exc)
            return False
        return True

    def _await_commit(self) -> None:
        """After "ready": once the predecessor has committed and exited, tidy its leftovers."""
        committed = False
        try:
            while True:
                message = self._channel.recv(3600)
                if message is not None and message.get("commit"):
                    committed = True
        except (EOFError, OSError):
            pass
        self._channel.close()
        if not committed or self._installation is None:
            return
        _wait_gone(self.predecessor_pid, STOP_TIMEOUT * 2)
        removed = remove_leftovers(self._installation)
        if removed:
            log.info("self-update: removed %s", ", ".join(removed))


def take_handover(
    environ: dict[str, str] | None = None,
    *,
    version: str | None = None,
    timeout: float = 15.0,
    fromshare: Callable[[bytes], socket.socket] | None = None,
    installation: Installation | None = None,
) -> Successor | None:
    """In a process started by a self-update: get the predecessor's listening socket.

    None when this process was not started that way. ``environ`` is changed: the variable
    is removed so that it does not leak into the child servers.
    """
    global _started_by_handover
    environ = os.environ if environ is None else environ
    value = environ.pop(ENV_HANDOVER, None)
    if not value:
        return None
    _started_by_handover = True
    port_text, _, token = value.partition(":")
    if not port_text.isdigit() or not token:
        raise SelfUpdateError(f"{ENV_HANDOVER} must be PORT:TOKEN, got {value[:20]!r}")
    version = version or trayupdater.__version__
    try:
        sock = socket.create_connection(("127.0.0.1", int(port_text)), timeout=timeout)
    except OSError as exc:
        raise SelfUpdateError(f"handover: cannot reach the predecessor: {exc}") from None
    sock.settimeout(None)
    channel = _Channel(sock)
    try:
        channel.send({"token": token, "pid": os.getpid(), "version": version})
        grant = channel.recv(timeout)
    except (OSError, EOFError) as exc:
        channel.close()
        raise SelfUpdateError(f"handover refused by the predecessor: {exc}") from None
    if grant is None or "error" in grant:
        channel.close()
        why = grant["error"] if grant else f"no answer within {timeout:g} s"
        raise SelfUpdateError(f"handover refused by the predecessor: {why}")
    try:
        listener = _socket_from_grant(grant, fromshare or getattr(socket, "fromshare", _no_share))
    except (OSError, ValueError, SelfUpdateError) as exc:
        channel.close()  # the predecessor sees us hang up and rolls back
        raise SelfUpdateError(f"handover: unusable socket from the predecessor: {exc}") from None
    if installation is None:
        installation = find_installation()
    log.info(
        "handover: took the listening socket %s from pid %s",
        listener.getsockname(),
        grant.get("pid"),
    )
    return Successor(channel, listener, int(grant.get("pid", 0)), installation=installation)


def _no_share(data: bytes) -> socket.socket:
    raise SelfUpdateError("socket sharing is only available on Windows")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name != "posix":
        return True  # no cheap check without pywin32: wait the full timeout; what is
        # still in use then stays for the next start (finish_pending_update)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the predecessor's side ---------------------------------------------------------------------


class Handover(Protocol):
    """What the running app lends a self-update (the update worker implements it)."""

    def listening_socket(self) -> socket.socket:
        """The proxy's listening socket, to share with the successor."""

    def retire(self) -> None:
        """The successor serves: stop accepting, finish in-flight requests, stop the child.
        Must not write state.json (the successor owns it now)."""


@dataclass
class SelfUpdateState:
    blocked: list[str] = field(default_factory=list)
    last_error: str | None = None
    last_check: float | None = None
    last_result: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> SelfUpdateState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s); starting afresh", path.name, exc)
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(
            blocked=[str(v) for v in data.get("blocked") or []],
            last_error=data.get("last_error"),
            last_check=data.get("last_check"),
            last_result=dict(data.get("last_result") or {}),
        )

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.__dict__, indent=2, sort_keys=True))


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
        self.source = source or GitHubSource(self.repo, api_url=config.api_url, token=config.token)
        self.platform = platform or Platform(installation.os, Platform.current().arch)
        self.pattern = config.self_update_asset_pattern or DEFAULT_ASSET_PATTERN
        self._current_version = current_version or (lambda: trayupdater.__version__)
        self.ops = ops or FileOps()
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self._environ = environ  # None: this process's environment when the successor starts
        self.ready_timeout = ready_timeout
        self._share = share or (lambda sock, pid: sock.share(pid))
        self._popen = popen
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

        On success ``handover.retire()`` is called and the process exits (this does not
        return). Raises SelfUpdateError (or the pipeline's errors) on failure, after
        putting everything back.
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
            self.apply(staged, plan.release.version_text, handover)
        except TrayUpdaterError as exc:
            state = SelfUpdateState.load(self.state_path)  # apply() may have blocked it
            state.last_error = str(exc)
            state.save(self.state_path)
            raise
        return SelfUpdateResult("replaced", plan.current, latest)

    # --- staging ---

    def stage(self, release: Release, asset: Asset) -> Path:
        """Download, verify and unpack ``asset`` into ``<target>.new``; that path."""
        expected = find_expected_digest(release, asset, self.source.fetch_text)
        if expected is None and self.config.require_checksum:
            raise VerificationError(
                f"{asset.name}: no checksum for the app's own update; refusing to run it"
            )
        work = self.data_dir / "selfupdate"
        work.mkdir(parents=True, exist_ok=True)
        url, headers = self.source.download_headers(asset)
        result = download(
            self.source.session,
            url,
            work / asset.name,
            headers=headers,
            max_bytes=self.config.max_download_bytes,
            expected_size=asset.size or None,
        )
        unpack = work / "unpack"
        try:
            if expected is not None:
                check_digest(result.sha256, expected, asset.name)
            else:
                log.warning(
                    "%s: self-update WITHOUT checksum verification (configured)", asset.name
                )
            if self.config.public_key:
                from trayupdater.signatures import verify_release_asset

                verify_release_asset(
                    release,
                    asset,
                    result.path,
                    public_key=self.config.public_key,
                    fetch_text=self.source.fetch_text,
                )
            staged = self.installation.sibling(".new")
            _remove(staged, self.ops)
            if self.installation.kind == "file":
                _remove(unpack, self.ops)
                extract(result.path, unpack, asset_name=asset.name)
                exe = find_executable(
                    unpack,
                    exe_name=self.installation.executable.name,
                    repo_name=self.installation.executable.stem,
                    os_name=self.installation.os,
                )
                _copy_synced(exe, staged)
            else:
                extract(result.path, staged, asset_name=asset.name)
                staged = self._staged_root(staged)
        except OSError as exc:
            raise SelfUpdateError(f"cannot stage {asset.name}: {exc.strerror or exc}") from None
        finally:
            result.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                _remove(unpack, self.ops)
        log.info("staged %s %s at %s", self.repo, release.version_text, staged)
        return staged

    def _staged_root(self, unpacked: Path) -> Path:
        """The folder inside an unpacked archive that replaces the target folder/bundle."""
        inner = self.installation.inner_executable
        candidates = [unpacked, *(p for p in sorted(unpacked.iterdir()) if p.is_dir())]
        for root in candidates:
            if (root / inner).is_file():
                if root != unpacked:
                    # Move it to the top so the swap renames one known path.
                    holder = unpacked.with_name(unpacked.name + ".tmp")
                    _remove(holder, self.ops)
                    self.ops.rename(root, holder)
                    self.ops.rmtree(unpacked)
                    self.ops.rename(holder, unpacked)
                exe = unpacked / inner
                exe.chmod(exe.stat().st_mode | 0o755)
                return unpacked
        self.ops.rmtree(unpacked)
        raise SelfUpdateError(f"the update has no {inner} (expected a {self.installation.kind})")

    # --- replacing and handing over ---

    def apply(self, staged: Path, version: str, handover: Handover) -> None:
        """Swap ``staged`` in, start it, and commit (retire + exit) or roll back (raise)."""
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
        proc: subprocess.Popen[bytes] | None = None
        token = secrets.token_urlsafe(24)
        try:
            with socket.create_server(("127.0.0.1", 0)) as server:
                listener = handover.listening_socket()
                self._forget_child()
                proc = self._spawn(listener, server.getsockname()[1], token)
                channel = self._await_ready(server, proc, token, version, listener)
        except _Failed as exc:
            self._roll_back(swap, proc, snapshot, version, str(exc))
            raise SelfUpdateError(
                f"self-update to {version} rolled back: {exc}; {version} is blocked"
            ) from None
        except BaseException as exc:  # a bug or Ctrl-C mid-way: never leave the swap behind
            self._roll_back(swap, proc, snapshot, version, f"{type(exc).__name__}: {exc}")
            raise
        self._commit(swap, version)
        with contextlib.suppress(OSError):
            channel.send({"commit": True})
        log.info("self-update: %s serves now (pid %s); retiring", version, proc.pid)
        handover.retire()
        channel.close()
        self._exit()

    def _spawn(self, listener: socket.socket, port: int, token: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ if self._environ is None else self._environ)
        env[ENV_HANDOVER] = f"{port}:{token}"
        # A fresh PyInstaller instance: unpack the new build, ignore our _PYI_* variables.
        env["PYINSTALLER_RESET_ENVIRONMENT"] = "1"
        if self.installation.os == "linux" and "LD_LIBRARY_PATH_ORIG" in env:
            env["LD_LIBRARY_PATH"] = env.pop("LD_LIBRARY_PATH_ORIG")
        elif self.installation.os == "linux":
            env.pop("LD_LIBRARY_PATH", None)  # it pointed at our unpacked libraries
        argv = [str(self.installation.executable), *self.argv]
        kwargs: dict[str, Any] = {"env": env, "stdin": subprocess.DEVNULL}
        if self.installation.os == "windows":
            # Detached: closing the console it was started from must not end the successor.
            kwargs["creationflags"] = 0x200 | 0x8  # CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS
        else:
            # Its own session: our terminal's Ctrl-C or hang-up must not reach it.
            kwargs.update(pass_fds=(listener.fileno(),), start_new_session=True)
        log.info("self-update: starting %s", argv[0])
        try:
            return self._popen(argv, **kwargs)
        except OSError as exc:
            raise _Failed(f"cannot start {argv[0]}: {exc.strerror or exc}") from None

    def _await_ready(
        self,
        server: socket.socket,
        proc: subprocess.Popen[bytes],
        token: str,
        version: str,
        listener: socket.socket,
    ) -> _Channel:
        deadline = time.monotonic() + self.ready_timeout
        channel: _Channel | None = None
        expected = parse_version(version)
        while True:
            code = proc.poll()
            if code is not None:
                raise _Failed(f"the new build exited with code {code} before it was ready")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Failed(f"the new build did not report ready within {self.ready_timeout:g} s")
            step = min(0.2, remaining)
            if channel is None:
                if not select.select([server], [], [], step)[0]:
                    continue
                conn, _ = server.accept()
                candidate = _Channel(conn)
                try:
                    hello = candidate.recv(min(5.0, max(remaining, 0.1)))
                except (EOFError, OSError):
                    hello = None
                if hello is None or not hmac.compare_digest(
                    str(hello.get("token", "")).encode(), token.encode()
                ):
                    candidate.close()  # not our successor (or it did not say so): ignore
                    continue
                if parse_version(str(hello.get("version", ""))) != expected:
                    with contextlib.suppress(OSError):
                        candidate.send({"error": f"expected version {version}"})
                    candidate.close()
                    raise _Failed(
                        f"the new build says it is {hello.get('version')!r}, not {version}"
                    )
                pid = int(hello.get("pid") or 0)
                try:
                    grant = _grant(listener, self.installation.os, pid, self._share)
                    candidate.send({**grant, "pid": os.getpid()})
                except OSError as exc:
                    candidate.close()
                    raise _Failed(f"cannot hand over the socket: {exc}") from None
                channel = candidate
                continue
            try:
                message = channel.recv(step)
            except (EOFError, OSError) as exc:
                raise _Failed(f"the new build hung up before it was ready ({exc})") from None
            if message is None:
                continue
            if message.get("ready"):
                if proc.poll() is None:
                    return channel
                raise _Failed("the new build exited right after reporting ready")
            if "failed" in message:
                raise _Failed(f"the new build failed to start: {message['failed']}")

    def _roll_back(
        self,
        swap: Swap,
        proc: subprocess.Popen[bytes] | None,
        snapshot: dict[Path, bytes | None],
        version: str,
        why: str,
    ) -> None:
        log.error("self-update to %s failed: %s; rolling back", version, why)
        if proc is not None:
            _stop(proc, self.installation.os)
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
        state.last_result = {"outcome": "rolled_back", "version": version, "at": time.time()}
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
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(data, dict) and data.get("child_pid"):
            data["child_pid"] = None
            data["child_port"] = None
            atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


class _Failed(Exception):
    """The successor did not take over; the message says why."""


def _copy_synced(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` (executable), flushed to disk before anyone can run it."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o755)
    with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
        shutil.copyfileobj(inp, out, 1024 * 1024)
        out.flush()
        os.fsync(out.fileno())
    if os.name == "posix":
        os.chmod(dest, 0o755)  # noqa: S103 - a program: everyone may run it, as installed


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.restore")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _stop(proc: subprocess.Popen[bytes], os_name: str) -> None:
    """Stop a successor that did not take over: politely, then for good."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(OSError):
        if os_name == "windows":
            proc.terminate()
        else:
            proc.send_signal(signal.SIGTERM)  # the onefile bootloader forwards it
    try:
        proc.wait(STOP_TIMEOUT)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(OSError):
        if os_name != "windows":
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the whole group
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_TIMEOUT)


def is_successor() -> bool:
    """Was this process started by a self-update (before or after take_handover())?

    Its predecessor still runs and owns control.json: the single-instance check must not
    send this process away.
    """
    return _started_by_handover or bool(os.environ.get(ENV_HANDOVER))


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
