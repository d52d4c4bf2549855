"""Unpack a downloaded asset into a fresh folder without trusting it, and find the program.

The archive is hostile until proven otherwise. Every entry is checked by hand (tarfile's
``data`` filter, where this Python has it, is applied on top, not instead, except to links:
it would resolve every link on the way again for each, see real_paths):
- names: no absolute paths, drive letters, ``..`` or NUL; backslashes count as separators,
  so ``..\\evil`` is refused like ``../evil``;
- nothing is ever written through a symlink, and a symlink or hard link may only point
  inside the folder (checked again on disk once everything is unpacked, so link chains
  cannot escape either; links that loop or nest deeper than the kernel follows are
  refused); devices, FIFOs and other special files are refused;
- at most ``max_files`` entries (the folders a member's path implies count too: a 140 KB
  tar made a million of them) and ``max_total_bytes`` bytes actually written (declared
  sizes are never trusted), which defuses zip and tar bombs;
- at most ``MAX_DEPTH`` folders deep: os.walk and shutil.rmtree recurse once per level, and
  a 1,200-deep path in a 5 KB tar raised RecursionError looking for the program and in every
  clean-up, the one at start-up too, so the old version no longer served after a restart.
On any refusal ExtractionError is raised and ``dest`` is emptied again (the folder itself
is left for the caller, who created it, to remove).

Asset kinds go by name: ``.tar.gz .tgz .tar.xz .txz .tar.bz2 .tbz2 .tar .zip`` archives;
``.gz .xz .bz2`` single compressed files (unpacked without that suffix); anything else is
the program itself and is copied under its own name. Its name usually carries the platform
(``simple-server_Linux_x86_64``), so find_executable accepts the only file of a folder
rather than expecting a rename.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

from trayupdater.errors import ExtractionError
from trayupdater.real_paths import RealPaths, TangledLinks

CHUNK_SIZE = 64 * 1024
MAX_LINK_TARGET = 4096  # bytes of a symlink target stored in a zip entry
MAX_TAR_HEADER = 1024 * 1024  # bytes of a PAX or GNU long-name header's data
MAX_DEPTH = 100  # path parts of an entry; far below Python's recursion limit of 1,000

_TAR_MODES = {
    ".tar.gz": "r:gz",
    ".tgz": "r:gz",
    ".tar.xz": "r:xz",
    ".txz": "r:xz",
    ".tar.bz2": "r:bz2",
    ".tbz2": "r:bz2",
    ".tbz": "r:bz2",
    ".tar": "r:",
}
_SINGLE_FILE: dict[str, Callable[[Path], IO[bytes]]] = {
    ".gz": gzip.GzipFile,
    ".xz": lzma.LZMAFile,
    ".bz2": bz2.BZ2File,
}
# Installers and formats this module cannot unpack: better refused than "run" as a binary.
_NOT_PROGRAMS = (
    *(".deb", ".rpm", ".apk", ".msi", ".msix", ".appx", ".dmg", ".pkg", ".snap", ".nupkg"),
    *(".7z", ".rar", ".zst", ".sig", ".asc", ".minisig", ".pem", ".sbom.json"),
)
_DRIVE = re.compile(r"^[A-Za-z]:")
_TAR_METADATA = (
    *(tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE),
    *(tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK),
)


def archive_kind(asset_name: str) -> str:
    """``"tar"``, ``"zip"``, ``"single"`` (one compressed file) or ``"bare"`` (the program)."""
    lowered = asset_name.lower()
    if lowered.endswith(tuple(_NOT_PROGRAMS)):
        raise ExtractionError(f"{asset_name}: not an archive or program this app can install")
    if lowered.endswith(tuple(_TAR_MODES)):
        return "tar"
    if lowered.endswith(".zip"):
        return "zip"
    if lowered.endswith(tuple(_SINGLE_FILE)):
        return "single"
    return "bare"


def extract(
    archive: Path,
    dest: Path,
    *,
    asset_name: str,
    max_total_bytes: int = 2 * 1024**3,
    max_files: int = 10_000,
) -> None:
    """Unpack ``archive`` (named ``asset_name`` in the release) into the empty folder ``dest``."""
    kind = archive_kind(asset_name)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"{dest} must be empty to extract into")
    out = _Writer(dest, asset_name, max_total_bytes, max_files)
    try:
        if kind == "tar":
            _extract_tar(archive, asset_name, out)
        elif kind == "zip":
            _extract_zip(archive, out)
        else:
            _copy_single(archive, asset_name, kind, out)
        out.check_links()
    except ExtractionError:
        _empty(dest)
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError) as exc:
        _empty(dest)
        raise ExtractionError(f"{asset_name}: damaged or unreadable archive ({exc})") from exc
    except (ValueError, IndexError, KeyError, OverflowError, struct.error) as exc:
        # What tarfile and zipfile let out on some malformed headers (a PAX sparse map that
        # is not numbers, a zip entry without a name): the archive's fault, not ours.
        _empty(dest)
        raise ExtractionError(
            f"{asset_name}: damaged or unreadable archive ({type(exc).__name__}: {exc})"
        ) from exc
    except (OSError, RuntimeError, UnicodeDecodeError) as exc:
        # OSError: bad gzip/bz2 data or the disk; RuntimeError: encrypted zip entries,
        # NotImplementedError: unsupported compression methods.
        _empty(dest)
        raise ExtractionError(f"{asset_name}: cannot unpack ({exc})") from exc


def find_executable(folder: Path, *, exe_name: str | None, repo_name: str, os_name: str) -> Path:
    """The program inside an unpacked asset, made executable on POSIX.

    With ``exe_name`` (a file name, or a path relative to ``folder``) that file; otherwise
    a file named like the repository; otherwise the only executable (``.exe`` on Windows,
    an exec bit elsewhere); and in every case the only file, when there is just one.
    Names compare case-insensitively; ``.exe`` is implied on Windows; shallower files win.
    """
    windows = os_name.lower().startswith("win")
    files = _files(folder)
    chosen: Path | None = None
    if exe_name and ("/" in exe_name or "\\" in exe_name):
        chosen = _by_path(folder, exe_name)
    elif exe_name:
        chosen = _by_name(folder, files, exe_name, windows)
    else:
        chosen = _by_name(folder, files, repo_name, windows) or _only_executable(files, windows)
    if chosen is None and len(files) == 1:
        chosen = files[0]
    if chosen is None:
        wanted = repr(exe_name) if exe_name else f"{repo_name!r} or a single executable"
        raise ExtractionError(
            f"cannot tell which file is the program (looked for {wanted}); "
            f"found: {_listing(folder, files)}. Set exe_name in the config."
        )
    if not windows:
        mode = chosen.stat().st_mode
        chosen.chmod(mode | stat.S_IXUSR | ((mode & 0o444) >> 2))
    return chosen


class _Writer:
    """Creates entries under ``root`` and enforces every limit while doing so."""

    def __init__(self, root: Path, label: str, max_bytes: int, max_files: int) -> None:
        self.root = root
        self.label = label
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.written = 0
        self.entries = 0
        self.regular: set[tuple[str, ...]] = set()  # files written, for hard links
        self.links: list[Path] = []

    def fail(self, message: str) -> ExtractionError:
        return ExtractionError(f"{self.label}: {message}; refused")

    def count(self) -> None:
        self.entries += 1
        if self.entries > self.max_files:
            raise self.fail(f"more than {self.max_files} entries")

    def parts(self, name: str) -> tuple[str, ...]:
        """The entry name as safe path parts below the root (``()`` for the root itself)."""
        if "\x00" in name:
            raise self.fail(f"entry name {name!r} contains NUL")
        posix = name.replace("\\", "/")
        if posix.startswith("/") or _DRIVE.match(posix):
            raise self.fail(f"entry {name!r} has an absolute path")
        parts = tuple(p for p in posix.split("/") if p not in ("", "."))
        if ".." in parts:
            raise self.fail(f"entry {name!r} climbs out with '..'")
        if len(parts) > MAX_DEPTH:
            raise self.fail(f"entry {name[:80]!r}... is nested more than {MAX_DEPTH} folders deep")
        if os.name == "nt" and any(":" in p for p in parts):
            raise self.fail(f"entry {name!r} names an alternate data stream")
        return parts

    def mkdir(self, parts: tuple[str, ...]) -> None:
        if parts:
            path = self._parent(parts)
            if os.path.lexists(path):
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise self.fail(f"{'/'.join(parts)} is both a folder and a file or link")
                return
            os.mkdir(path, 0o755)

    def write_file(self, parts: tuple[str, ...], src: IO[bytes], mode: int) -> None:
        path = self._new_entry(parts)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
            while chunk := src.read(CHUNK_SIZE):
                self.written += len(chunk)
                if self.written > self.max_bytes:
                    raise self.fail(f"unpacks to more than {self.max_bytes} bytes (a bomb?)")
                out.write(chunk)
        # Keep exec bits and owner access; drop setuid/setgid/sticky and group/other write.
        os.chmod(path, (mode & 0o755) | 0o600)
        self.regular.add(parts)

    def symlink(self, parts: tuple[str, ...], target: str) -> None:
        shown = f"link {'/'.join(parts)} -> {target}"
        posix = target.replace("\\", "/")
        if not posix or "\x00" in posix:
            raise self.fail(f"{shown} has an empty or invalid target")
        if posix.startswith("/") or _DRIVE.match(posix):
            raise self.fail(f"{shown} points to an absolute path")
        # Resolve lexically from the link's folder; parents are never links (see _parent),
        # and check_links() re-checks the real resolution once all entries exist.
        where = list(parts[:-1])
        for part in posix.split("/"):
            if part == "..":
                if not where:
                    raise self.fail(f"{shown} points outside the folder")
                where.pop()
            elif part not in ("", "."):
                where.append(part)
        os.symlink(posix, self._new_entry(parts))
        self.links.append(self.root.joinpath(*parts))

    def hardlink(self, parts: tuple[str, ...], target: str) -> None:
        # Written as a copy: simpler than a real link and the same to the program.
        try:
            source = self.parts(target)
        except ExtractionError:
            raise self.fail(
                f"hard link {'/'.join(parts)} -> {target} points outside the folder"
            ) from None
        if source not in self.regular:
            raise self.fail(
                f"hard link {'/'.join(parts)} -> {target} is not to a file unpacked before it"
            )
        path = self.root.joinpath(*source)
        with open(path, "rb") as src:
            self.write_file(parts, src, stat.S_IMODE(os.stat(path).st_mode))

    def check_links(self) -> None:
        # Not os.path.realpath per link: that resolves the others again for each (real_paths).
        real = RealPaths(self.root)
        for link in self.links:
            try:
                inside = real.inside(link)
            except TangledLinks as exc:
                raise self.fail(f"link {link.relative_to(self.root)}: {exc}") from None
            if not inside:
                raise self.fail(f"link {link.relative_to(self.root)} resolves outside the folder")

    def _new_entry(self, parts: tuple[str, ...]) -> Path:
        if not parts:
            raise self.fail("an entry names the folder itself as a file")
        path = self._parent(parts)
        if os.path.lexists(path):
            raise self.fail(f"duplicate entry {'/'.join(parts)}")
        return path

    def _parent(self, parts: tuple[str, ...]) -> Path:
        """The path for ``parts`` after creating its folders, none of which may be a link."""
        current = self.root
        for i, part in enumerate(parts[:-1]):
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                # An entry too: counted, or names alone would make a million folders.
                self.count()
                os.mkdir(current, 0o755)
                continue
            if stat.S_ISLNK(mode):
                where = "/".join(parts[: i + 1])
                raise self.fail(f"entry {'/'.join(parts)} would be written through link {where}")
            if not stat.S_ISDIR(mode):
                raise self.fail(f"entry {'/'.join(parts)} is below a file")
        return current / parts[-1]


def _copy_single(archive: Path, asset_name: str, kind: str, out: _Writer) -> None:
    """A bare program, or one compressed file: one file named after the asset."""
    name = asset_name
    reader: Callable[[Path], IO[bytes]] = io.FileIO  # plain binary reads
    if kind == "single":
        suffix = next(s for s in _SINGLE_FILE if asset_name.lower().endswith(s))
        name, reader = asset_name[: -len(suffix)], _SINGLE_FILE[suffix]
    parts = out.parts(name)
    if len(parts) != 1:
        raise out.fail(f"{name!r} is not usable as a file name")
    out.count()
    with reader(archive) as src:
        out.write_file(parts, src, 0o755)


class _TarInfo(tarfile.TarInfo):
    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        # tarfile reads such a header's data in one read() of the size it declares: 1 TiB
        # was a MemoryError, gigabytes of compressed zeros a bomb in memory past max_total_bytes.
        info = super().frombuf(buf, encoding, errors)
        if info.type in _TAR_METADATA and info.size > MAX_TAR_HEADER:
            raise tarfile.HeaderError(f"a {info.size}-byte header")
        return info


def _extract_tar(archive: Path, asset_name: str, out: _Writer) -> None:
    mode = next(m for s, m in _TAR_MODES.items() if asset_name.lower().endswith(s))
    data_filter = getattr(tarfile, "data_filter", None)  # 3.12+, and late 3.10/3.11 patches
    with tarfile.open(archive, mode, tarinfo=_TarInfo) as tar:  # type: ignore[call-overload]
        for member in tar:
            out.count()
            parts = out.parts(member.name)
            if not (member.isdir() or member.isreg() or member.issym() or member.islnk()):
                raise out.fail(f"{member.name} is a device, FIFO or other special file")
            # Not for links: the filter calls os.path.realpath, which walks every link on the
            # way again for each member (quadratic, see real_paths); check_links() does it.
            if data_filter is not None and not (member.issym() or member.islnk()):
                try:
                    data_filter(member, str(out.root))
                except tarfile.FilterError as exc:
                    raise out.fail(f"{member.name}: {exc}") from exc
            if member.isdir():
                out.mkdir(parts)
            elif member.issym():
                out.symlink(parts, member.linkname)
            elif member.islnk():
                out.hardlink(parts, member.linkname)
            else:
                src = tar.extractfile(member)
                if src is None:
                    raise out.fail(f"{member.name} has no readable content")
                with src:
                    out.write_file(parts, src, member.mode)


def _extract_zip(archive: Path, out: _Writer) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > out.max_files:
            raise out.fail(f"{len(infos)} entries, more than {out.max_files}")
        for info in infos:
            out.count()
            if not info.filename:  # is_dir() would index it
                raise out.fail("an entry has no name")
            parts = out.parts(info.filename)
            # Unix file type and mode bits, when the zip was made on a Unix (macOS too).
            unix_mode = info.external_attr >> 16 if info.create_system == 3 else 0
            kind = stat.S_IFMT(unix_mode)
            if info.is_dir() or kind == stat.S_IFDIR:
                out.mkdir(parts)
            elif kind == stat.S_IFLNK:
                with zf.open(info) as src:
                    target = src.read(MAX_LINK_TARGET + 1)
                if len(target) > MAX_LINK_TARGET:
                    raise out.fail(f"link {info.filename} has an overlong target")
                out.symlink(parts, target.decode("utf-8"))
            elif kind in (0, stat.S_IFREG):
                with zf.open(info) as src:
                    out.write_file(parts, src, stat.S_IMODE(unix_mode) if unix_mode else 0o644)
            else:
                raise out.fail(f"{info.filename} is a device, FIFO or other special file")


def _empty(folder: Path) -> None:
    """Remove what a failed extraction left; links are removed, never followed."""
    for entry in list(folder.iterdir()):
        # is_symlink() first: is_dir() stats a link's target, an OSError for a too-long name.
        if not entry.is_symlink() and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def _files(folder: Path) -> list[Path]:
    """Regular files (and links to files inside ``folder``), shallowest first."""
    real = RealPaths(folder)  # not os.path.realpath per file: see real_paths
    found: list[Path] = []
    for here, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(here) / name
            # os.path.isfile: Path.is_file() raises on a link to a too-long name.
            if os.path.isfile(path) and _really_inside(real, path):
                found.append(path)
    return sorted(found, key=lambda p: (len(p.relative_to(folder).parts), str(p).lower()))


def _really_inside(real: RealPaths, path: Path) -> bool:
    try:
        return real.inside(path)
    except TangledLinks:
        return False


def _by_name(folder: Path, files: list[Path], name: str, windows: bool) -> Path | None:
    wanted = {name.lower()}
    if windows and not name.lower().endswith(".exe"):
        wanted.add(name.lower() + ".exe")
    matches = [p for p in files if p.name.lower() in wanted]
    if not matches:
        return None
    depth = len(matches[0].relative_to(folder).parts)
    best = [p for p in matches if len(p.relative_to(folder).parts) == depth]
    if len(best) > 1:
        raise ExtractionError(
            f"several files are named {name!r}: {_listing(folder, best)}; "
            "set exe_name to the path of the right one"
        )
    return best[0]


def _by_path(folder: Path, relative: str) -> Path | None:
    path = folder.joinpath(*re.split(r"[\\/]", relative))
    root = os.path.realpath(folder)
    inside = os.path.realpath(path).startswith(root.rstrip(os.sep) + os.sep)
    return path if inside and os.path.isfile(path) else None


def _only_executable(files: list[Path], windows: bool) -> Path | None:
    if windows:
        programs = [p for p in files if p.suffix.lower() == ".exe"]
    else:
        programs = [p for p in files if p.stat().st_mode & 0o111]
    return programs[0] if len(programs) == 1 else None


def _listing(folder: Path, files: list[Path], limit: int = 20) -> str:
    if not files:
        return "no files"
    shown = [p.relative_to(folder).as_posix() for p in files[:limit]]
    more = f" (+{len(files) - limit} more)" if len(files) > limit else ""
    return ", ".join(shown) + more
