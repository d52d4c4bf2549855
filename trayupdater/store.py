"""The version store on disk: ``versions/<version>/`` folders and ``state.json``.

Invariant: a folder under ``versions/`` that holds a ``manifest.json`` is a complete, verified
install. Installs are built in ``versions/<version>.tmp-*`` and renamed into place; the
rename is the commit point, so a crash at any moment leaves either nothing or a whole
version. ``state.json`` is replaced atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from trayupdater.errors import StorageError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_SAFE_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+!_-]*$")
# time.time() values beyond this are nonsense, and overflow time and timer functions.
MAX_TIMESTAMP = 221845392000.0  # 9000-01-01 UTC
# Our JSON files are a few hundred bytes; a bigger one is damaged, not read into memory whole.
MAX_JSON_FILE_BYTES = 1024 * 1024


@dataclass
class State:
    """What survives a restart. Only the update worker writes it."""

    active: str | None = None
    previous: str | None = None
    blocked: list[str] = field(default_factory=list)  # versions never to update to again
    recalled: list[str] = field(default_factory=list)  # blocked because the publisher recalled
    etag: str | None = None
    last_check: float | None = None
    last_error: str | None = None
    latest_seen: str | None = None
    child_pid: int | None = None  # so a restarted app can adopt or clean up its child
    child_port: int | None = None
    probation_until: float | None = None  # time.time() until which the new version is on trial
    # Update controls (preferences.py); defaults keep older state files loading.
    skipped: str | None = None  # never install this version (newer ones are installed)
    paused: bool = False  # install nothing while set
    paused_until: float | None = None  # time.time() the pause ends; None with paused: until resumed

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        """Hand-edited or from another build: a field of the wrong type or an unsafe value
        means "not set", never a crash later (a bad ``active`` would leave nothing serving)."""
        state = cls()
        wrong: list[str] = []
        for name, check in _FIELD_CHECKS.items():
            if name not in data:
                continue
            value = check(data[name])
            if value is _WRONG:
                wrong.append(f"{name}={data[name]!r:.60}")
            else:
                setattr(state, name, value)
        if wrong:
            log.warning("state.json: ignoring %s (wrong type or value)", ", ".join(wrong))
        return state


_WRONG = object()  # a field check's answer for "not a valid value": the default is kept


def is_safe_version_name(name: object) -> bool:
    """A version name usable as a folder of ``versions/``: no separators, no leading dot."""
    return isinstance(name, str) and _SAFE_VERSION.match(name) is not None


def _version_name(value: object) -> object:
    return value if value is None or is_safe_version_name(value) else _WRONG


def _text(value: object) -> object:
    return value if value is None or isinstance(value, str) else _WRONG


def _texts(value: object) -> object:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else _WRONG


def _timestamp(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _WRONG
    # A NaN fails the comparison too; a huge int is compared exactly, never converted.
    return float(value) if 0 <= value <= MAX_TIMESTAMP else _WRONG


def _integer(low: int, high: int) -> Callable[[object], object]:
    def check(value: object) -> object:
        if value is None:
            return None
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return value if ok else _WRONG

    return check


def _flag(value: object) -> object:
    return value if isinstance(value, bool) else _WRONG


_FIELD_CHECKS: dict[str, Callable[[object], object]] = {
    "active": _version_name,
    "previous": _version_name,
    "blocked": _texts,
    "recalled": _texts,
    "etag": _text,
    "last_check": _timestamp,
    "last_error": _text,
    "latest_seen": _version_name,
    "child_pid": _integer(1, 2**31 - 1),
    "child_port": _integer(1, 65535),
    "probation_until": _timestamp,
    "skipped": _text,
    "paused": _flag,
    "paused_until": _timestamp,
}


@dataclass(frozen=True)
class InstalledVersion:
    version: str
    folder: Path
    executable: Path
    sha256: str
    asset: str
    installed_at: float


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def version_key(text: str) -> tuple[int, Version | str]:
    try:
        return (1, Version(text))
    except InvalidVersion:
        return (0, text)


def read_json_file(path: Path, limit: int = MAX_JSON_FILE_BYTES) -> Any:
    """One of our small JSON files, parsed. ``OSError`` if it cannot be read (also
    ``FileNotFoundError``), ``ValueError`` if it is over ``limit`` bytes, not UTF-8 or not
    JSON, or nested too deep to parse (RecursionError would otherwise escape)."""
    with path.open("rb") as file:
        raw = file.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"over {limit} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:  # [[[[... nested deeper than the interpreter's stack
        raise ValueError("nested too deep") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder, fsync, rename: readers see old or new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return  # Windows cannot open a directory for fsync; NTFS renames are journaled
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class VersionStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.versions_dir = data_dir / "versions"
        self.downloads_dir = data_dir / "downloads"
        self.state_path = data_dir / "state.json"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.downloads_dir.mkdir(parents=True, exist_ok=True)

    # --- state ---

    def load_state(self) -> State:
        try:
            data = read_json_file(self.state_path)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            return State.from_json(data)
        except FileNotFoundError:
            return State()
        except (OSError, ValueError, TypeError) as exc:
            # Damaged (atomic writes make it unlikely), a folder, unreadable: keep a copy and
            # start afresh rather than refuse to run (the installed versions are still on
            # disk). OSError covers IsADirectoryError and PermissionError.
            backup = self._set_aside(exc)
            log.error("state.json was unreadable (%s); moved to %s", exc, backup.name)
            return State()

    def _set_aside(self, reason: BaseException) -> Path:
        """Move the unreadable state file to a name of its own (never over an earlier copy:
        two bad files in one second are two copies)."""
        stamp = int(time.time())
        for attempt in range(100):
            suffix = f".corrupt-{stamp}" + (f"-{attempt}" if attempt else "")
            backup = self.state_path.with_suffix(suffix)
            if os.path.lexists(backup):
                continue
            try:
                self.state_path.replace(backup)
            except OSError as exc:
                raise StorageError(
                    f"cannot read {self.state_path} ({reason}) nor move it aside "
                    f"({exc.strerror or exc}); fix or remove it"
                ) from exc
            return backup
        raise StorageError(f"cannot read {self.state_path} ({reason}); remove it")

    def save_state(self, state: State) -> None:
        atomic_write_text(self.state_path, json.dumps(asdict(state), indent=2, sort_keys=True))

    # --- versions ---

    def folder(self, version: str) -> Path:
        if not _SAFE_VERSION.match(version):
            raise ValueError(f"unsafe version name {version!r}")
        return self.versions_dir / version

    def installed(self) -> list[str]:
        """Complete installs, oldest first."""
        # Install folders are named str(Version); temp and trash folders never parse as one.
        found = [
            p.name
            for p in self.versions_dir.iterdir()
            if p.is_dir() and (p / MANIFEST).is_file() and version_key(p.name)[0] == 1
        ]
        return sorted(found, key=version_key)

    def _manifest(self, version: str) -> tuple[Path, Path, dict[str, Any]] | None:
        """(folder, program, manifest) of an install whose manifest is complete; None if
        there is none (the program itself may be gone)."""
        if not is_safe_version_name(version):
            return None  # never a path outside versions/, whatever state.json names
        folder = self.folder(version)
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            exe = (folder / data["executable"]).resolve()
            exe.relative_to(folder.resolve())  # the manifest cannot point outside its folder
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return folder, exe, data

    def get(self, version: str) -> InstalledVersion | None:
        found = self._manifest(version)
        if found is None or not found[1].is_file():
            return None
        folder, exe, data = found
        return InstalledVersion(
            version=version,
            folder=folder,
            executable=exe,
            sha256=str(data.get("sha256", "")),
            asset=str(data.get("asset", "")),
            installed_at=float(data.get("installed_at", 0)),
        )

    def install(
        self,
        version: str,
        populate: Callable[[Path], Path],
        *,
        sha256: str,
        asset: str,
    ) -> InstalledVersion:
        """Build a version in a temp folder with ``populate(tmp) -> exe``, then commit it.

        ``populate`` extracts the verified download into the folder and returns the program's
        path inside it. Anything it raises leaves no trace in the store.
        """
        final = self.folder(version)
        tmp = Path(tempfile.mkdtemp(prefix=f"{version}.tmp-", dir=self.versions_dir))
        try:
            exe = populate(tmp)
            manifest = {
                "version": version,
                "executable": exe.resolve().relative_to(tmp.resolve()).as_posix(),
                "executable_sha256": file_sha256(exe),  # to tell a damaged install (damage())
                "sha256": sha256,
                "asset": asset,
                "installed_at": time.time(),
            }
            # The manifest is written last: without it the folder is never taken as installed.
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2))
            if final.exists():
                # A re-install of the same version (say, after a corrupt copy): move the old
                # one aside first so the rename below cannot fail half-way.
                self._discard(final)
            os.replace(tmp, final)
            _fsync_dir(self.versions_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        installed = self.get(version)
        assert installed is not None
        return installed

    def damage(self, version: str) -> str | None:
        """What is wrong with the files of an install that was complete (its manifest is
        there): its program is missing, or is not the one installed (a hash recorded at
        install differs); None if neither is seen. An antivirus quarantining a program, a
        disk error or a hand edit does that: the release is not to blame."""
        found = self._manifest(version)
        if found is None:
            return None  # not an install we can judge
        _, exe, data = found
        recorded = data.get("executable_sha256")
        if not exe.is_file():
            return "its program is missing"
        if isinstance(recorded, str) and recorded:
            try:
                now = file_sha256(exe)
            except OSError as exc:
                return f"its program cannot be read ({exc.strerror or exc})"
            if now != recorded:
                return "its program is not the one installed"
        return None

    def remove(self, version: str) -> None:
        folder = self.folder(version)
        if folder.exists():
            self._discard(folder)

    def _discard(self, folder: Path) -> None:
        # Rename first (atomic: the version disappears at once), then delete at leisure.
        trash = folder.with_name(f"{folder.name}.trash-{time.monotonic_ns()}")
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def prune(self, keep: int, protect: set[str]) -> list[str]:
        """Delete the oldest installs beyond ``keep``, never one in ``protect``."""
        removed: list[str] = []
        versions = self.installed()
        excess = len(versions) - keep
        for version in versions:  # oldest first
            if excess <= 0:
                break
            if version in protect:
                continue
            self.remove(version)
            removed.append(version)
            excess -= 1
        return removed

    def clean_temporary(self) -> list[str]:
        """Remove leftovers of interrupted installs: temp, trash and manifest-less folders."""
        removed: list[str] = []
        for path in self.versions_dir.iterdir():
            incomplete = not (path / MANIFEST).is_file() or version_key(path.name)[0] == 0
            if path.is_dir() and incomplete:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
            elif path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path.name)
        for path in self.data_dir.glob(".state.json.*.tmp"):
            path.unlink(missing_ok=True)
        return removed

    def download_path(self, asset_name: str) -> Path:
        """Where an asset is downloaded; a ``.part`` beside it is resumed after a crash."""
        name = Path(asset_name).name
        if name != asset_name or name in ("", ".", "..") or "\\" in name:
            # Sources validate names already; this is the last line before the disk.
            raise ValueError(f"unsafe asset name {asset_name!r}")
        return self.downloads_dir / name
