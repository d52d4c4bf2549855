"""Where the running app's executable lives, and swapping a new build in by renames.

The file operations are injectable (``FileOps``) so tests can give Linux files the
Windows rules (a running exe can be renamed but not replaced or deleted).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trayupdater.errors import SelfUpdateError
from trayupdater.platforms import Platform

log = logging.getLogger(__name__)

_SUFFIXES = (".old", ".new", ".failed")


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
