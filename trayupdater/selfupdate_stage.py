"""Unpacking the app's own update, verified already, into ``<target>.new``: the build alone.

A single-file install takes the executable found in the archive (copied, fsynced: never a
half-written program). A folder or ``.app`` install takes the folder that holds the inner
executable, moved to the top so the swap renames one known path. Only a real folder is
taken, and once moved none of its links may lead outside it: extraction checked links
against the whole archive, and a link into a sibling (``../other/x``) would lead beside the
installation after the move, to a file no checksum covered.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from trayupdater.errors import SelfUpdateError
from trayupdater.extract import extract, find_executable
from trayupdater.installation import FileOps, Installation, _remove
from trayupdater.real_paths import RealPaths, TangledLinks


def unpack_build(
    archive: Path,
    asset_name: str,
    installation: Installation,
    ops: FileOps,
    *,
    unpack: Path,
    max_total_bytes: int,
) -> Path:
    """The build in ``archive``, staged beside the installation; that path. ``unpack`` is a
    work folder (single-file installs), left for the caller to remove."""
    staged = installation.sibling(".new")
    _remove(staged, ops)
    if installation.kind != "file":
        extract(archive, staged, asset_name=asset_name, max_total_bytes=max_total_bytes)
        return _staged_root(staged, installation, ops)
    _remove(unpack, ops)
    extract(archive, unpack, asset_name=asset_name, max_total_bytes=max_total_bytes)
    exe = find_executable(
        unpack,
        exe_name=installation.executable.name,
        repo_name=installation.executable.stem,
        os_name=installation.os,
    )
    _copy_synced(exe, staged)
    return staged


def _staged_root(unpacked: Path, installation: Installation, ops: FileOps) -> Path:
    """The folder inside an unpacked archive that replaces the target folder/bundle."""
    inner = installation.inner_executable
    # Real folders only: a link moved out of the archive's folder resolves from beside
    # the installation (relative targets), to nothing or to the installed build itself.
    candidates = [
        unpacked,
        *(p for p in sorted(unpacked.iterdir()) if p.is_dir() and not p.is_symlink()),
    ]
    for root in candidates:
        if (root / inner).is_file():
            if root != unpacked:
                # Move it to the top so the swap renames one known path.
                holder = unpacked.with_name(unpacked.name + ".tmp")
                _remove(holder, ops)
                ops.rename(root, holder)
                ops.rmtree(unpacked)
                ops.rename(holder, unpacked)
            # Extraction checked the links against the whole archive; a link of the
            # moved folder into a sibling (``../other/x``) now leads beside the
            # installation, to a file no checksum covered.
            escaping = _link_leaving(unpacked)
            if escaping is not None:
                ops.rmtree(unpacked)
                raise SelfUpdateError(
                    f"the update's link {escaping} leads outside its own folder; refused"
                )
            exe = unpacked / inner
            exe.chmod(exe.stat().st_mode | 0o755)
            return unpacked
    ops.rmtree(unpacked)
    raise SelfUpdateError(f"the update has no {inner} (expected a {installation.kind})")


def _copy_synced(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` (executable), flushed to disk before anyone can run it."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o755)
    with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
        shutil.copyfileobj(inp, out, 1024 * 1024)
        out.flush()
        os.fsync(out.fileno())
    if os.name == "posix":
        os.chmod(dest, 0o755)  # noqa: S103 - a program: everyone may run it, as installed


def _link_leaving(root: Path) -> str | None:
    """The first link below ``root`` (relative to it) that does not resolve inside it."""
    real = RealPaths(root)
    for folder, dirs, files in os.walk(root):  # links to folders are listed, not entered
        for name in sorted(dirs + files):
            path = Path(folder, name)
            if not path.is_symlink():
                continue
            try:
                inside = real.inside(path)
            except TangledLinks:
                inside = False
            if not inside:
                return path.relative_to(root).as_posix()
    return None
