"""Self-update: finding the installation, swapping it, staging releases, handing over.

Real files, real archives from a real release feed, and real successor processes (small
Python programs that speak the handover protocol on the socket they are given). The
Windows and macOS paths run here too: what differs on those OSes is injected (Windows'
"a running exe can be renamed but not replaced" rules, ``socket.share``, an atomic
directory exchange), everything else is the same code on real files and sockets.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from trayupdater import handover
from trayupdater.config import Config
from trayupdater.errors import SelfUpdateError, StorageError, VerificationError
from trayupdater.feed import ReleaseFeed
from trayupdater.handover import ENV_HANDOVER, take_handover
from trayupdater.installation import (
    FileOps,
    Installation,
    Swap,
    find_installation,
    remove_leftovers,
)
from trayupdater.platforms import Platform
from trayupdater.selfupdate import SelfUpdater, finish_pending_update
from trayupdater.selfupdate_state import SelfUpdateState

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_REPO = "demo/trayupdater"
LINUX = Platform("linux", "x86_64")

posix_only = pytest.mark.skipif(
    os.name != "posix", reason="POSIX scripts as successors, symlinks in bundles"
)


# --- where the app lives ----------------------------------------------------------------------


def test_not_frozen_means_nothing_to_replace() -> None:
    assert find_installation(frozen=False) is None
    assert find_installation() is None  # the test run itself is not frozen


@pytest.mark.parametrize(
    ("os_name", "exe", "meipass", "kind", "target"),
    [
        ("linux", "/opt/tu/trayupdater", "/tmp/_MEI12ab", "file", "/opt/tu/trayupdater"),
        # onefile beside its unpack folder's parent must not look like onedir
        ("linux", "/tmp/trayupdater", "/tmp/_MEI12ab", "file", "/tmp/trayupdater"),
        ("linux", "/opt/tu/trayupdater", "/opt/tu/_internal", "folder", "/opt/tu"),
        ("windows", "/Users/me/AppData/tu/trayupdater.exe", "/Temp/_MEI9", "file", None),
        (
            "darwin",
            "/Applications/TrayUpdater.app/Contents/MacOS/trayupdater",
            "/Applications/TrayUpdater.app/Contents/Frameworks",
            "bundle",
            "/Applications/TrayUpdater.app",
        ),
    ],
)
def test_installation_layouts(
    os_name: str, exe: str, meipass: str, kind: str, target: str | None
) -> None:
    inst = find_installation(frozen=True, executable=exe, meipass=meipass, os_name=os_name)
    assert inst is not None
    assert inst.kind == kind and inst.os == os_name
    assert inst.target == Path(target or exe).resolve()
    assert inst.executable == Path(exe).resolve()
    assert inst.sibling(".old").name == inst.target.name + ".old"


@posix_only
def test_started_through_a_symlink_the_real_install_is_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "opt" / "trayupdater"
    (folder / "_internal").mkdir(parents=True)
    (folder / "trayupdater").write_text("exe")
    link = tmp_path / "bin" / "trayupdater"
    link.parent.mkdir()
    link.symlink_to(folder / "trayupdater")
    inst = find_installation(
        frozen=True, executable=str(link), meipass=str(folder / "_internal"), os_name="linux"
    )
    assert inst is not None and (inst.kind, inst.target) == ("folder", folder)


def test_windows_onedir_cannot_self_update(tmp_path: Path) -> None:
    inst = Installation(tmp_path, tmp_path / "trayupdater.exe", "folder", "windows")
    with pytest.raises(SelfUpdateError, match="onefile"):
        Swap(inst, tmp_path.with_name("x.new"), FileOps())


# --- swapping files and folders ---------------------------------------------------------------


@posix_only
def test_posix_swap_replaces_a_running_executable(tmp_path: Path) -> None:
    exe = tmp_path / "trayupdater"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", exe)
    running = subprocess.Popen([str(exe), "30"])
    try:
        old_bytes = exe.read_bytes()
        if sys.platform.startswith("linux"):
            with pytest.raises(OSError):  # ETXTBSY: why the new build is staged beside it
                exe.open("r+b").close()
        staged = tmp_path / "trayupdater.new"
        staged.write_bytes(b"#!/bin/sh\necho new\n")
        swap = Swap(Installation(exe, exe, "file", "linux"), staged, FileOps())
        swap.apply()
        assert exe.read_bytes() == b"#!/bin/sh\necho new\n"
        assert (tmp_path / "trayupdater.old").read_bytes() == old_bytes
        assert not staged.exists()
        assert running.poll() is None  # the running program never noticed
        swap.restore()
        assert exe.read_bytes() == old_bytes and not (tmp_path / "trayupdater.old").exists()
    finally:
        running.kill()
        running.wait()


class WindowsFs:
    """Windows' rules for running executables, applied to real files: a running exe can be
    renamed (its lock follows it) but not replaced or deleted; renaming onto an existing
    file fails. Locks are predicates, so a successor's lock ends when its process does."""

    def __init__(self) -> None:
        self.locks: dict[Path, Callable[[], bool]] = {}

    def lock(self, path: Path, while_: Callable[[], bool] = lambda: True) -> None:
        self.locks[path] = while_

    def locked(self, path: Path | str) -> bool:
        check = self.locks.get(Path(path))
        return bool(check and check())

    def ops(self) -> FileOps:
        return FileOps(
            replace=self.replace,
            rename=self.rename,
            link=self.link,
            unlink=self.unlink,
            rmtree=shutil.rmtree,
            exchange=None,
        )

    def _move_lock(self, src: Path | str, dst: Path | str) -> None:
        check = self.locks.pop(Path(src), None)
        if check is not None:
            self.locks[Path(dst)] = check

    def replace(self, src: Path, dst: Path) -> None:
        if self.locked(dst):
            raise PermissionError(13, "The process cannot access the file", str(dst))
        os.replace(src, dst)
        self.locks.pop(Path(dst), None)
        self._move_lock(src, dst)

    def rename(self, src: Path, dst: Path) -> None:
        if os.path.lexists(dst):
            raise FileExistsError(17, "Cannot create a file when that file already exists")
        os.rename(src, dst)
        self._move_lock(src, dst)

    def unlink(self, path: Path) -> None:
        if self.locked(path):
            raise PermissionError(13, "Access is denied", str(path))
        os.unlink(path)

    def link(self, src: Path, dst: Path) -> None:
        raise AssertionError("the Windows path must not hard-link")


def test_windows_swap_renames_the_running_exe_aside(tmp_path: Path) -> None:
    fs = WindowsFs()
    exe = tmp_path / "trayupdater.exe"
    exe.write_bytes(b"old exe")
    fs.lock(exe)  # we are running from it
    inst = Installation(exe, exe, "file", "windows")
    staged = tmp_path / "trayupdater.exe.new"
    staged.write_bytes(b"new exe")
    swap = Swap(inst, staged, fs.ops())
    swap.apply()
    assert exe.read_bytes() == b"new exe"
    assert (tmp_path / "trayupdater.exe.old").read_bytes() == b"old exe"
    assert fs.locked(tmp_path / "trayupdater.exe.old")
    # While the old exe runs, its .old stays; once it has exited it goes.
    assert remove_leftovers(inst, fs.ops()) == []
    fs.locks.clear()
    assert remove_leftovers(inst, fs.ops()) == ["trayupdater.exe.old"]


def test_windows_swap_puts_the_exe_back_when_the_move_fails(tmp_path: Path) -> None:
    fs = WindowsFs()
    exe = tmp_path / "trayupdater.exe"
    exe.write_bytes(b"old exe")
    fs.lock(exe)
    staged = tmp_path / "trayupdater.exe.new"
    staged.write_bytes(b"new exe")
    ops = fs.ops()

    def failing_replace(src: Path, dst: Path) -> None:
        raise OSError(28, "There is not enough space on the disk")

    ops.replace = failing_replace
    with pytest.raises(OSError):
        Swap(Installation(exe, exe, "file", "windows"), staged, ops).apply()
    assert exe.read_bytes() == b"old exe" and fs.locked(exe)
    assert not (tmp_path / "trayupdater.exe.old").exists()


def test_windows_stale_old_still_running_is_a_clear_error(tmp_path: Path) -> None:
    fs = WindowsFs()
    exe = tmp_path / "trayupdater.exe"
    exe.write_bytes(b"current")
    stale = tmp_path / "trayupdater.exe.old"
    stale.write_bytes(b"an exiting predecessor")
    fs.lock(stale)
    staged = tmp_path / "trayupdater.exe.new"
    staged.write_bytes(b"new")
    with pytest.raises(SelfUpdateError, match=r"trayupdater\.exe\.old"):
        Swap(Installation(exe, exe, "file", "windows"), staged, fs.ops()).apply()
    assert exe.read_bytes() == b"current"


def _make_bundle(path: Path, marker: str) -> None:
    macos = path / "Contents" / "MacOS"
    macos.mkdir(parents=True)
    (macos / "trayupdater").write_text(marker)
    (path / "Contents" / "Info.plist").write_text(marker)
    (path / "Contents" / "Frameworks").symlink_to("MacOS")


class Recorder:
    """An exchange function that records its calls around the real one (or none)."""

    def __init__(self, real: Callable[[Path, Path], None] | None) -> None:
        self.real = real
        self.calls: list[tuple[str, str]] = []

    def __call__(self, a: Path, b: Path) -> None:
        self.calls.append((Path(a).name, Path(b).name))
        if self.real is None:
            raise OSError(22, "Invalid argument")  # a file system without the call
        self.real(a, b)


@pytest.mark.skipif(FileOps().exchange is None, reason="no renameat2 here")
@pytest.mark.parametrize("exchange", ["atomic", "unsupported", "absent"])
def test_bundle_swap_replaces_the_whole_app(tmp_path: Path, exchange: str) -> None:
    app = tmp_path / "TrayUpdater.app"
    _make_bundle(app, "old")
    staged = tmp_path / "TrayUpdater.app.new"
    _make_bundle(staged, "new")
    recorder = Recorder(FileOps().exchange if exchange == "atomic" else None)
    ops = FileOps(exchange=None if exchange == "absent" else recorder)
    inst = Installation(app, app / "Contents/MacOS/trayupdater", "bundle", "darwin")
    swap = Swap(inst, staged, ops)
    swap.apply()
    assert (app / "Contents/MacOS/trayupdater").read_text() == "new"
    assert (app / "Contents/Info.plist").read_text() == "new"  # nothing of the old mixed in
    assert (tmp_path / "TrayUpdater.app.old/Contents/Info.plist").read_text() == "old"
    assert not staged.exists()
    if exchange == "atomic":
        assert recorder.calls == [("TrayUpdater.app.new", "TrayUpdater.app")]
    swap.restore()
    assert (app / "Contents/Info.plist").read_text() == "old"
    assert os.readlink(app / "Contents/Frameworks") == "MacOS"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["TrayUpdater.app"]


def test_leftovers_are_removed_at_start_but_not_in_a_successor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = tmp_path / "trayupdater"
    exe.write_text("current")
    for suffix in (".old", ".new", ".failed"):
        (tmp_path / f"trayupdater{suffix}").write_text("leftover")
    inst = Installation(exe, exe, "file", "linux")
    monkeypatch.setattr(handover, "_started_by_handover", True)  # take_handover() ran
    assert handover.is_successor()
    assert finish_pending_update(inst) == []  # the predecessor may still roll back
    monkeypatch.setattr(handover, "_started_by_handover", False)
    monkeypatch.setenv(ENV_HANDOVER, "1:x")  # before take_handover() has run
    assert handover.is_successor()
    assert finish_pending_update(inst) == []
    monkeypatch.delenv(ENV_HANDOVER)
    assert not handover.is_successor()
    assert sorted(finish_pending_update(inst)) == [
        "trayupdater.failed",
        "trayupdater.new",
        "trayupdater.old",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["trayupdater"]


# --- releases: picking, verifying, staging ------------------------------------------------------


def _config(feed: ReleaseFeed, data: Path, **changes: Any) -> Config:
    values: dict[str, Any] = {
        "repo": "demo/simple-server",
        "api_url": feed.url,
        "data_dir": data,
        "self_update_repo": APP_REPO,
        "probation_seconds": 0.3,  # the new build's probation (long ones are set per test)
        **changes,
    }
    return replace(Config(), **values)


def _tgz(files: dict[str, bytes], mode: int = 0o755) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, (stat.S_IFREG | 0o755) << 16
            zf.writestr(info, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _updater(
    feed: ReleaseFeed,
    tmp_path: Path,
    inst: Installation,
    *,
    platform: Platform = LINUX,
    current: str = "1.0.0",
    **kwargs: Any,
) -> SelfUpdater:
    config = _config(feed, tmp_path / "data", **kwargs.pop("config", {}))
    return SelfUpdater(config, inst, platform=platform, current_version=lambda: current, **kwargs)


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        (Platform("linux", "x86_64"), "trayupdater_Linux_x86_64.tar.gz"),
        (Platform("linux", "aarch64"), "trayupdater_Linux_arm64.tar.gz"),
        (Platform("darwin", "arm64"), "trayupdater_Darwin_arm64.zip"),
        (Platform("darwin", "x86_64"), "trayupdater_Darwin_x86_64.zip"),
        (Platform("windows", "x86_64"), "trayupdater_Windows_x86_64.zip"),
    ],
)
def test_app_asset_is_picked_from_a_release_shared_with_the_child(
    feed: ReleaseFeed, tmp_path: Path, platform: Platform, expected: str
) -> None:
    # The names packaging/ci/release.yml publishes, beside the child's own assets.
    names = [
        "trayupdater_Linux_x86_64.tar.gz",
        "trayupdater_Linux_arm64.tar.gz",
        "trayupdater_Darwin_arm64.zip",
        "trayupdater_Darwin_x86_64.zip",
        "trayupdater_Windows_x86_64.zip",
        "trayupdater-setup-2.0.0.exe",
        "simple-server_Linux_x86_64.tar.gz",
        "simple-server_Windows_x86_64.zip",
        "simple-server_Darwin_arm64.tar.gz",
    ]
    feed.publish("demo/simple-server", "v2.0.0", {n: b"x" for n in names})
    exe = tmp_path / "trayupdater"
    inst = Installation(exe, exe, "file", platform.os)
    config = {"self_update_repo": "demo/simple-server"}
    plan = _updater(feed, tmp_path, inst, platform=platform, config=config).plan()
    assert plan.asset is not None and plan.asset.name == expected
    assert plan.newer and plan.should_install


def test_nothing_happens_without_a_newer_unblocked_release(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    exe = tmp_path / "app" / "trayupdater"
    exe.parent.mkdir()
    exe.write_text("current")
    inst = Installation(exe, exe, "file", "linux")
    updater = _updater(feed, tmp_path, inst, current="2.0.0")
    assert updater.check_and_apply(OldApp()).outcome == "no_release"
    feed.publish(APP_REPO, "v2.0.0", {"trayupdater_Linux_x86_64.tar.gz": _tgz({"x": b"1"})})
    assert updater.check_and_apply(OldApp()).outcome == "up_to_date"
    feed.publish(APP_REPO, "v2.1.0", {"trayupdater_Windows_x86_64.zip": b"x"})
    assert updater.check_and_apply(OldApp()).outcome == "no_asset"
    feed.publish(APP_REPO, "v2.2.0", {"trayupdater_Linux_x86_64.tar.gz": _tgz({"x": b"1"})})
    SelfUpdateState(blocked=["2.2.0"]).save(updater.state_path)
    result = updater.check_and_apply(OldApp())
    assert (result.outcome, result.latest) == ("blocked", "2.2.0")
    assert sorted(p.name for p in exe.parent.iterdir()) == ["trayupdater"]


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ('{"blocked": 5, "last_error": "boom"}', {"last_error": "boom"}),
        ('{"blocked": ["2.0.0", 2]}', {"blocked": ["2.0.0", "2"]}),
        ('{"last_result": "x", "last_check": 1700000000}', {"last_check": 1.7e9}),
        ('{"last_check": "x", "last_result": {"a": 1}}', {"last_result": {"a": 1}}),
        ('{"last_check": true, "last_error": 5}', {}),
        ('{"last_check": NaN}', {}),
        ('{"last_check": 1e400}', {}),
        ("[1, 2]", {}),
    ],
)
def test_selfupdate_state_of_the_wrong_type_falls_back_per_field(
    tmp_path: Path, raw: str, kept: dict[str, object]
) -> None:
    """Another build or a hand edit: a crash here would end self-update for good."""
    path = tmp_path / "selfupdate.json"
    path.write_text(raw)
    assert SelfUpdateState.load(path) == SelfUpdateState(**kept)  # type: ignore[arg-type]


def test_a_tampered_download_is_refused_before_anything_is_replaced(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    exe = tmp_path / "app" / "trayupdater"
    exe.parent.mkdir()
    exe.write_text("current")
    name = "trayupdater_Linux_x86_64.tar.gz"
    # checksums.txt is the only source here (no GitHub digest to disagree with).
    feed.publish(APP_REPO, "v2.0.0", {name: _tgz({"trayupdater": b"genuine"})}, digests=False)
    feed.replace_asset(APP_REPO, "v2.0.0", name, _tgz({"trayupdater": b"evil"}))
    updater = _updater(feed, tmp_path, Installation(exe, exe, "file", "linux"))
    with pytest.raises(VerificationError, match="SHA-256"):
        updater.check_and_apply(OldApp())
    assert exe.read_text() == "current"
    assert sorted(p.name for p in exe.parent.iterdir()) == ["trayupdater"]
    assert "SHA-256" in (SelfUpdateState.load(updater.state_path).last_error or "")


def test_an_app_update_too_big_for_the_disk_is_refused_before_it_is_fetched(
    feed: ReleaseFeed, tmp_path: Path, small_disk: Path
) -> None:
    exe = tmp_path / "app" / "trayupdater"
    exe.parent.mkdir()
    exe.write_text("current")
    name = "trayupdater_Linux_x86_64.tar.gz"
    feed.publish(APP_REPO, "v2.0.0", {name: _tgz({"trayupdater": os.urandom(2_000_000)})})
    downloads = feed.stats.downloads
    updater = _updater(feed, small_disk, Installation(exe, exe, "file", "linux"))
    with pytest.raises(StorageError, match="it needs about"):
        updater.check_and_apply(OldApp())
    assert feed.stats.downloads == downloads
    assert exe.read_text() == "current"


def test_a_release_without_checksums_is_refused(feed: ReleaseFeed, tmp_path: Path) -> None:
    exe = tmp_path / "trayupdater"
    exe.write_text("current")
    feed.publish(
        APP_REPO,
        "v2.0.0",
        {"trayupdater_Linux_x86_64": b"binary"},
        digests=False,
        checksums=False,
    )
    updater = _updater(feed, tmp_path, Installation(exe, exe, "file", "linux"))
    with pytest.raises(VerificationError, match="no checksum"):
        updater.check_and_apply(OldApp())
    assert exe.read_text() == "current"


def _stage(updater: SelfUpdater) -> Path:
    plan = updater.plan()
    assert plan.release is not None and plan.asset is not None, plan
    return updater.stage(plan.release, plan.asset)


def test_staging_a_bare_binary_and_an_archive_for_a_onefile_build(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    exe = tmp_path / "trayupdater"
    exe.write_text("current")
    inst = Installation(exe, exe, "file", "linux")
    feed.publish(APP_REPO, "v2.0.0", {"trayupdater_Linux_x86_64": b"bare build"})
    staged = _stage(_updater(feed, tmp_path, inst))
    assert staged == tmp_path / "trayupdater.new"
    assert staged.read_bytes() == b"bare build" and os.access(staged, os.X_OK)
    files = {"trayupdater": b"archived build", "trayupdater.desktop": b"[Desktop Entry]\n"}
    feed.publish(APP_REPO, "v2.1.0", {"trayupdater_Linux_x86_64.tar.gz": _tgz(files)})
    staged = _stage(_updater(feed, tmp_path, inst))
    assert staged.read_bytes() == b"archived build" and os.access(staged, os.X_OK)
    assert exe.read_text() == "current"
    assert not (tmp_path / "data" / "selfupdate" / "unpack").exists()


def test_staging_a_windows_zip(feed: ReleaseFeed, tmp_path: Path) -> None:
    exe = tmp_path / "trayupdater.exe"
    exe.write_text("current")
    inst = Installation(exe, exe, "file", "windows")
    zipped = _zip({"trayupdater.exe": b"MZ new", "README.txt": b"hi"})
    feed.publish(APP_REPO, "v2.0.0", {"trayupdater_Windows_x86_64.zip": zipped})
    platform = Platform("windows", "x86_64")
    staged = _stage(_updater(feed, tmp_path, inst, platform=platform))
    assert staged == tmp_path / "trayupdater.exe.new" and staged.read_bytes() == b"MZ new"


@posix_only
def test_staging_a_macos_bundle_keeps_its_symlinks(feed: ReleaseFeed, tmp_path: Path) -> None:
    app = tmp_path / "TrayUpdater.app"
    _make_bundle(app, "old")
    inst = Installation(app, app / "Contents/MacOS/trayupdater", "bundle", "darwin")
    zipped = _zip(
        {
            "TrayUpdater.app/Contents/MacOS/trayupdater": b"new",
            "TrayUpdater.app/Contents/Info.plist": b"new plist",
        },
        links={"TrayUpdater.app/Contents/Frameworks": "MacOS"},
    )
    feed.publish(APP_REPO, "v2.0.0", {"trayupdater_Darwin_arm64.zip": zipped})
    platform = Platform("darwin", "arm64")
    staged = _stage(_updater(feed, tmp_path, inst, platform=platform))
    assert staged == tmp_path / "TrayUpdater.app.new"
    assert (staged / "Contents/MacOS/trayupdater").read_bytes() == b"new"
    assert os.readlink(staged / "Contents/Frameworks") == "MacOS"


def test_staging_a_linux_onedir_folder(feed: ReleaseFeed, tmp_path: Path) -> None:
    folder = tmp_path / "trayupdater"
    (folder / "_internal").mkdir(parents=True)
    (folder / "trayupdater").write_text("old")
    inst = Installation(folder, folder / "trayupdater", "folder", "linux")
    files = {
        "trayupdater/trayupdater": b"new",
        "trayupdater/_internal/libpython.so": b"lib",
        "trayupdater/trayupdater.desktop": b"[Desktop Entry]\n",
    }
    feed.publish(APP_REPO, "v2.0.0", {"trayupdater_Linux_x86_64.tar.gz": _tgz(files)})
    staged = _stage(_updater(feed, tmp_path, inst))
    assert staged == tmp_path / "trayupdater.new"
    assert sorted(p.name for p in staged.iterdir()) == [
        "_internal",
        "trayupdater",
        "trayupdater.desktop",
    ]
    feed.publish(APP_REPO, "v2.1.0", {"trayupdater_Linux_x86_64.tar.gz": _tgz({"other": b"x"})})
    with pytest.raises(SelfUpdateError, match="has no trayupdater"):
        _stage(_updater(feed, tmp_path, inst))
    assert not (tmp_path / "trayupdater.new").exists()


# --- handing over to a real successor process ---------------------------------------------

SUCCESSOR = """#!{python}
# A stand-in for the new build: takes the handover, serves its version on the socket.
import json, os, socket, sys, threading, time
sys.path.insert(0, {repo!r})
from trayupdater import handover

VERSION, MODE, DATA = {version!r}, {mode!r}, {data!r}
if MODE == "exit":
    sys.exit(3)
if MODE == "hang":
    time.sleep(120)
    sys.exit(0)
if MODE == "slow":  # a onefile build unpacking before it gets to the handover
    time.sleep(1.5)
fromshare = (lambda data: socket.socket(fileno=int(data))) if MODE == "windows" else None
successor = handover.take_handover(version=VERSION, fromshare=fromshare)
# What the real app does while it starts: it reads and rewrites state.json, control.json.
state = json.loads(open(os.path.join(DATA, "state.json")).read())
open(os.path.join(DATA, "seen-child-pid"), "w").write(json.dumps(state.get("child_pid")))
open(os.path.join(DATA, "state.json"), "w").write('{{"active": "successor"}}')
open(os.path.join(DATA, "control.json"), "w").write(json.dumps({{"pid": os.getpid()}}))
if MODE == "fail":
    successor.report_failed("no child could be started")
    time.sleep(120)

def serve():
    while True:
        conn, _ = successor.socket.accept()
        conn.recv(65536)
        body = VERSION.encode()
        head = "HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n"
        conn.sendall((head % len(body)).encode() + body)
        conn.close()

threading.Thread(target=serve, daemon=True).start()
successor.report_ready()
if MODE in ("crash", "killed", "quit"):  # a bug that shows soon after start, or a Quit
    time.sleep(0.5)
    if MODE == "killed":
        os.kill(os.getpid(), 9)
    os._exit(0 if MODE == "quit" else 3)
time.sleep(120)
"""


def _successor_script(version: str, mode: str, data: Path) -> bytes:
    return SUCCESSOR.format(
        python=sys.executable, repo=str(REPO_ROOT), version=version, mode=mode, data=str(data)
    ).encode()


class OldApp:
    """The running app's side of ``Handover``: a real listening socket, closed on retire
    as the proxy closes it, recorded retire."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.fileno = self.sock.fileno()
        self.retired = 0
        self.retired_at: float | None = None
        self.quit = threading.Event()  # a Quit (or a logout's SIGTERM) for the old process
        self.on_retire: Callable[[], None] | None = None

    def listening_socket(self) -> socket.socket:
        return self.sock

    def retire(self) -> None:
        self.sock.close()
        self.retired += 1
        self.retired_at = time.monotonic()
        if self.on_retire is not None:
            self.on_retire()

    def quitting(self) -> bool:
        return self.quit.is_set()


class Spawner:
    """Wraps Popen: records the successors (and can adjust what is passed) for clean-up."""

    def __init__(self, adjust: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.calls: list[dict[str, Any]] = []
        self.adjust = adjust

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        self.calls.append(dict(kwargs))
        if self.adjust:
            self.adjust(kwargs)
        proc = subprocess.Popen(argv, **kwargs)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                if hasattr(os, "killpg"):
                    with contextlib.suppress(OSError):  # its session, when it has one
                        os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    proc.kill()
            proc.wait(10)


@pytest.fixture
def spawner() -> Iterator[Spawner]:
    s = Spawner()
    yield s
    s.kill_all()


class Exits:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def _get(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/version")
    body = conn.getresponse().read().decode()
    conn.close()
    return body


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    folder.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "state.json").write_text('{"active": "1.4.0", "child_pid": 4242, "child_port": 9}')
    (data / "control.json").write_text('{"pid": 1, "port": 2, "token": "t"}')
    return folder


def _publish_app(feed: ReleaseFeed, version: str, name: str, files: dict[str, bytes]) -> None:
    asset = _tgz(files) if name.endswith(".tar.gz") else _zip(files)
    feed.publish(APP_REPO, f"v{version}", {name: asset})


@posix_only
def test_successful_handover_serves_from_the_new_build(
    feed: ReleaseFeed, tmp_path: Path, app_dir: Path, spawner: Spawner
) -> None:
    data = tmp_path / "data"
    exe = app_dir / "trayupdater"
    exe.write_bytes(b"#!/bin/sh\nexit 0\n")
    new = _successor_script("2.0.0", "ok", data)
    _publish_app(feed, "2.0.0", "trayupdater_Linux_x86_64.tar.gz", {"trayupdater": new})
    rogue: list[bytes] = []
    knocked = threading.Event()

    def knock(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b'{"token": "guess", "pid": 1, "version": "2.0.0"}\n')
            knocked.set()
            s.settimeout(30)
            rogue.append(s.recv(100))

    def knock_first(kwargs: dict[str, Any]) -> None:
        # Someone else on the machine connects before the successor, without the token.
        port = int(kwargs["env"][ENV_HANDOVER].split(":")[0])
        threading.Thread(target=knock, args=(port,), daemon=True).start()
        assert knocked.wait(10)

    spawner.adjust = knock_first
    old, exits = OldApp(), Exits()
    inst = Installation(exe, exe, "file", "linux")
    updater = _updater(feed, tmp_path, inst, popen=spawner, exit_process=exits, argv=["run"])
    result = updater.check_and_apply(old)
    assert result.outcome == "replaced" and (old.retired, exits.count) == (1, 1)
    assert rogue == [b""]  # hung up on, given nothing (it connected first: it was read)
    assert exe.read_bytes() == new
    env = spawner.calls[0]["env"]
    assert env["PYINSTALLER_RESET_ENVIRONMENT"] == "1"
    assert spawner.calls[0]["pass_fds"] == (old.fileno,)
    assert spawner.calls[0]["start_new_session"] is True
    # The successor serves on the socket we listened on (we never accept on it).
    assert _get(old.port) == "2.0.0"
    # It did not see our child's pid, so it could not have killed it as "stale".
    assert json.loads((data / "seen-child-pid").read_text()) is None
    state = SelfUpdateState.load(data / "selfupdate.json")
    assert state.last_result["outcome"] == "replaced" and state.last_error is None


@posix_only
def test_callers_that_say_nothing_on_the_handover_port_do_not_stall_the_successor(
    feed: ReleaseFeed, tmp_path: Path, app_dir: Path, spawner: Spawner
) -> None:
    """Anyone on the machine may connect to the handover port. Read one at a time, each
    silent caller cost 5 s: three of them pushed a good successor past an 8 s ready
    timeout, and the update was rolled back and its version blocked for good."""
    data = tmp_path / "data"
    exe = app_dir / "trayupdater"
    exe.write_bytes(b"#!/bin/sh\nexit 0\n")
    new = _successor_script("2.0.0", "ok", data)
    _publish_app(feed, "2.0.0", "trayupdater_Linux_x86_64.tar.gz", {"trayupdater": new})
    silent: list[socket.socket] = []

    def knock_first(kwargs: dict[str, Any]) -> None:
        port = int(kwargs["env"][ENV_HANDOVER].split(":")[0])
        silent.extend(socket.create_connection(("127.0.0.1", port)) for _ in range(3))

    spawner.adjust = knock_first
    old, exits = OldApp(), Exits()
    inst = Installation(exe, exe, "file", "linux")
    updater = _updater(
        feed, tmp_path, inst, popen=spawner, exit_process=exits, argv=["run"], ready_timeout=8.0
    )
    try:
        result = updater.check_and_apply(old)
    finally:
        for sock in silent:
            sock.close()
    assert result.outcome == "replaced" and (old.retired, exits.count) == (1, 1)
    assert _get(old.port) == "2.0.0"


@posix_only
@pytest.mark.parametrize(
    ("mode", "version", "why"),
    [
        ("exit", "2.0.0", "exited with code 3"),
        ("garbage", "2.0.0", "cannot start"),
        ("hang", "2.0.0", "did not report ready within 4 s"),
        ("ok", "1.9.0", "says it is '1.9.0'"),
        ("fail", "2.0.0", "no child could be started"),
    ],
)
def test_a_successor_that_does_not_take_over_is_rolled_back(
    feed: ReleaseFeed,
    tmp_path: Path,
    app_dir: Path,
    spawner: Spawner,
    mode: str,
    version: str,
    why: str,
) -> None:
    data = tmp_path / "data"
    exe = app_dir / "trayupdater"
    exe.write_bytes(b"#!/bin/sh\necho old build\n")
    before = {name: (data / name).read_bytes() for name in ("state.json", "control.json")}
    new = b"\x7fELF not really" if mode == "garbage" else _successor_script(version, mode, data)
    _publish_app(feed, "2.0.0", "trayupdater_Linux_x86_64.tar.gz", {"trayupdater": new})
    old, exits = OldApp(), Exits()
    inst = Installation(exe, exe, "file", "linux")
    updater = _updater(feed, tmp_path, inst, popen=spawner, exit_process=exits, ready_timeout=4.0)
    with pytest.raises(SelfUpdateError, match=why):
        updater.check_and_apply(old)
    assert (old.retired, exits.count) == (0, 0)
    assert exe.read_bytes() == b"#!/bin/sh\necho old build\n"
    assert sorted(p.name for p in app_dir.iterdir()) == ["trayupdater"]
    # The successor is gone and what it rewrote while starting is back as it was.
    assert all(proc.poll() is not None for proc in spawner.procs)
    assert {name: (data / name).read_bytes() for name in before} == before
    state = SelfUpdateState.load(data / "selfupdate.json")
    assert state.blocked == ["2.0.0"] and why in (state.last_error or "")
    assert state.last_result["outcome"] == "rolled_back"
    # Blocked: the next check leaves it alone.
    assert updater.check_and_apply(old).outcome == "blocked"


@posix_only
def test_windows_handover_shares_the_socket_and_renames_the_exe_aside(
    feed: ReleaseFeed, tmp_path: Path, app_dir: Path
) -> None:
    """The Windows path end to end, with socket.share and Windows' file rules injected."""
    data = tmp_path / "data"
    fs = WindowsFs()
    exe = app_dir / "trayupdater.exe"
    exe.write_bytes(b"old exe")
    fs.lock(exe)
    old, exits = OldApp(), Exits()
    shared: list[int] = []

    def share(sock: socket.socket, pid: int) -> bytes:
        shared.append(pid)  # WSADuplicateSocket targets the successor's own pid
        return str(sock.fileno()).encode()

    def as_on_windows(kwargs: dict[str, Any]) -> None:
        assert kwargs.pop("creationflags") & 0x200  # CREATE_NEW_PROCESS_GROUP
        assert "pass_fds" not in kwargs  # Windows gets the socket through share()
        kwargs["pass_fds"] = (old.sock.fileno(),)  # what share() stands for here

    spawner = Spawner(as_on_windows)
    new = _successor_script("2.0.0", "windows", data)
    _publish_app(feed, "2.0.0", "trayupdater_Windows_x86_64.zip", {"trayupdater.exe": new})
    inst = Installation(exe, exe, "file", "windows")
    updater = _updater(
        feed,
        tmp_path,
        inst,
        platform=Platform("windows", "x86_64"),
        ops=fs.ops(),
        share=share,
        popen=spawner,
        exit_process=exits,
    )
    try:
        updater.check_and_apply(old)
        assert (old.retired, exits.count) == (1, 1)
        assert exe.read_bytes() == new
        assert (app_dir / "trayupdater.exe.old").read_bytes() == b"old exe"
        assert shared == [spawner.procs[0].pid]  # a script: the successor is the process
        assert _get(old.port) == "2.0.0"
        # Still running from .old: it stays until the next start.
        assert remove_leftovers(inst, fs.ops()) == []
    finally:
        spawner.kill_all()


@posix_only
def test_windows_rollback_puts_the_old_exe_back(
    feed: ReleaseFeed, tmp_path: Path, app_dir: Path
) -> None:
    data = tmp_path / "data"
    fs = WindowsFs()
    exe = app_dir / "trayupdater.exe"
    exe.write_bytes(b"old exe")
    fs.lock(exe)

    def as_on_windows(kwargs: dict[str, Any]) -> None:
        kwargs.pop("creationflags")

    spawner = Spawner(as_on_windows)
    new = _successor_script("2.0.0", "exit", data)
    _publish_app(feed, "2.0.0", "trayupdater_Windows_x86_64.zip", {"trayupdater.exe": new})

    def popen(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = spawner(argv, **kwargs)
        fs.lock(exe, lambda: proc.poll() is None)  # the new exe is locked while it runs
        return proc

    updater = _updater(
        feed,
        tmp_path,
        Installation(exe, exe, "file", "windows"),
        platform=Platform("windows", "x86_64"),
        ops=fs.ops(),
        popen=popen,
        exit_process=Exits(),
    )
    with pytest.raises(SelfUpdateError, match="exited with code 3"):
        updater.check_and_apply(OldApp())
    assert exe.read_bytes() == b"old exe" and fs.locked(exe)
    assert sorted(p.name for p in app_dir.iterdir()) == ["trayupdater.exe"]


@pytest.mark.skipif(FileOps().exchange is None, reason="no renameat2 here")
def test_macos_bundle_handover_swaps_the_whole_bundle(
    feed: ReleaseFeed, tmp_path: Path, app_dir: Path, spawner: Spawner
) -> None:
    data = tmp_path / "data"
    app = app_dir / "TrayUpdater.app"
    _make_bundle(app, "old")
    exe = app / "Contents/MacOS/trayupdater"
    recorder = Recorder(FileOps().exchange)  # renameat2 stands in for renamex_np
    old, exits = OldApp(), Exits()
    new = _successor_script("2.0.0", "ok", data)
    files = {
        "TrayUpdater.app/Contents/MacOS/trayupdater": new,
        "TrayUpdater.app/Contents/Info.plist": b"new plist",
    }
    _publish_app(feed, "2.0.0", "trayupdater_Darwin_arm64.zip", files)
    updater = _updater(
        feed,
        tmp_path,
        Installation(app, exe, "bundle", "darwin"),
        platform=Platform("darwin", "arm64"),
        ops=FileOps(exchange=recorder),
        popen=spawner,
        exit_process=exits,
    )
    updater.check_and_apply(old)
    assert exits.count == 1 and recorder.calls == [("TrayUpdater.app.new", "TrayUpdater.app")]
    assert (app / "Contents/Info.plist").read_bytes() == b"new plist"
    assert (app_dir / "TrayUpdater.app.old/Contents/Info.plist").read_text() == "old"
    assert spawner.calls[0]["pass_fds"] == (old.fileno,)
    assert _get(old.port) == "2.0.0"


# --- the new build on probation: the old process watches it before it exits ---------------


def _old_build(data: Path) -> bytes:
    """The installed build, 1.0.0: started again after a crash, it takes the handover after
    1.5 s of start-up (a onefile build unpacks first) and serves."""
    return _successor_script("1.0.0", "slow", data)


def _refusing_old_build(data: Path) -> bytes:
    """An installed build that fails when handed the socket, and records a normal launch."""
    return (
        f'#!/bin/sh\n[ -n "${ENV_HANDOVER}" ] && exit 3\n'
        f'echo "old build $*" > "{data}/relaunched"\n'
    ).encode()


class Prober:
    """One client asking GET /version on fresh connections until stopped: what answered,
    and every failure by type."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(_get(self.port))
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(type(exc).__name__)
            time.sleep(0.02)


def _hand_over_on_probation(
    feed: ReleaseFeed,
    tmp_path: Path,
    app_dir: Path,
    spawner: Spawner,
    mode: str,
    probation: float,
    old: OldApp | None = None,
    old_build: bytes | None = None,
) -> tuple[SelfUpdater, str, OldApp, Exits]:
    """Update the old build to a 2.0.0 successor behaving as ``mode``: the updater, the
    outcome, the old app and its exits."""
    data = tmp_path / "data"
    exe = app_dir / "trayupdater"
    exe.write_bytes(old_build or _old_build(data))
    exe.chmod(0o755)
    new = _successor_script("2.0.0", mode, data)
    _publish_app(feed, "2.0.0", "trayupdater_Linux_x86_64.tar.gz", {"trayupdater": new})
    old, exits = old or OldApp(), Exits()
    updater = _updater(
        feed,
        tmp_path,
        Installation(exe, exe, "file", "linux"),
        popen=spawner,
        exit_process=exits,
        argv=["run"],
        config={"probation_seconds": probation},
    )
    outcome = updater.check_and_apply(old).outcome
    return updater, outcome, old, exits


@posix_only
@pytest.mark.parametrize(
    ("mode", "why"),
    [("crash", "2.0.0 exited with code 3 after"), ("killed", "2.0.0 was killed by SIGKILL after")],
)
def test_a_new_build_that_crashes_on_probation_gives_way_to_the_old_one(
    feed: ReleaseFeed, tmp_path: Path, app_dir: Path, spawner: Spawner, mode: str, why: str
) -> None:
    """2.0.0 reports ready, the old process retires, then 2.0.0 dies: the old build is put
    back and started again (nothing else would run), and 2.0.0 is blocked. A client sees
    no refused connection meanwhile: the socket was held for the old build, which took it
    over as a successor does."""
    data = tmp_path / "data"
    old = OldApp()
    with Prober(old.port) as prober:
        updater, outcome, old, exits = _hand_over_on_probation(
            feed, tmp_path, app_dir, spawner, mode, probation=20, old=old
        )
        assert _get(old.port) == "1.0.0"
    exe = app_dir / "trayupdater"
    assert outcome == "rolled_back" and (old.retired, exits.count) == (1, 1)
    assert exe.read_bytes() == _old_build(data)
    assert sorted(p.name for p in app_dir.iterdir()) == ["trayupdater"]
    state = SelfUpdateState.load(data / "selfupdate.json")
    assert state.blocked == ["2.0.0"]
    assert state.last_result["outcome"] == "rolled_back"
    assert why in state.last_result["reason"] and "(on probation)" in (state.last_error or "")
    # The old build was started again, handed the socket, in its own session.
    assert len(spawner.procs) == 2 and spawner.procs[1].args == [str(exe), "run"]
    relaunch = spawner.calls[1]
    assert ENV_HANDOVER in relaunch["env"] and relaunch["start_new_session"] is True
    assert "ConnectionRefusedError" not in prober.failures, prober.failures
    # At most the one request 2.0.0 had taken when it died; the rest waited for 1.0.0.
    assert len(prober.failures) <= 1, prober.failures
    assert {"2.0.0", "1.0.0"} <= set(prober.answers)
    # What the successor wrote stands: it is what the relaunched build goes on from.
    assert json.loads((data / "seen-child-pid").read_text()) is None
    assert updater.check_and_apply(old).outcome == "blocked"


@posix_only
def test_an_old_build_that_cannot_take_the_socket_is_launched_afresh(
    feed: ReleaseFeed, tmp_path: Path, app_dir: Path
) -> None:
    """The old build fails at the handover after a crash on probation: the socket we held
    is let go, so that a normal launch can bind the port itself."""
    data = tmp_path / "data"
    old = OldApp()
    port_free_at_relaunch: list[bool] = []

    def note_the_port(kwargs: dict[str, Any]) -> None:
        if ENV_HANDOVER not in kwargs["env"]:
            try:
                socket.create_server(("127.0.0.1", old.port)).close()
                port_free_at_relaunch.append(True)
            except OSError:
                port_free_at_relaunch.append(False)

    spawner = Spawner(note_the_port)
    try:
        _, outcome, _, _ = _hand_over_on_probation(
            feed, tmp_path, app_dir, spawner, "crash", 20, old, _refusing_old_build(data)
        )
        assert [proc.wait(10) for proc in spawner.procs] == [3, 3, 0]
    finally:
        spawner.kill_all()
    assert outcome == "rolled_back"
    assert [ENV_HANDOVER in call["env"] for call in spawner.calls] == [True, True, False]
    assert "pass_fds" not in spawner.calls[2] and port_free_at_relaunch == [True]
    assert (data / "relaunched").read_text() == "old build run\n"


@posix_only
def test_a_new_build_that_runs_through_its_probation_stays(
    feed: ReleaseFeed, tmp_path: Path, app_dir: Path, spawner: Spawner
) -> None:
    _, outcome, old, exits = _hand_over_on_probation(
        feed, tmp_path, app_dir, spawner, "ok", probation=1.0
    )
    watched = time.monotonic() - (old.retired_at or 0.0)
    assert outcome == "replaced" and (old.retired, exits.count) == (1, 1)
    assert watched >= 1.0  # the old process exited only once the probation was over
    assert len(spawner.procs) == 1 and spawner.procs[0].poll() is None
    assert _get(old.port) == "2.0.0"
    assert (app_dir / "trayupdater").read_bytes().startswith(b"#!" + sys.executable.encode())
    assert (app_dir / "trayupdater.old").exists()  # removed by the successor once we are gone
    state = SelfUpdateState.load(tmp_path / "data" / "selfupdate.json")
    assert state.blocked == [] and state.last_result["outcome"] == "replaced"


@posix_only
def test_a_new_build_quit_by_the_user_on_probation_is_not_rolled_back(
    feed: ReleaseFeed, tmp_path: Path, app_dir: Path, spawner: Spawner
) -> None:
    """Exit code 0: a Quit from its menu, or a logout; no reason to bring the old one back."""
    _, outcome, old, exits = _hand_over_on_probation(
        feed, tmp_path, app_dir, spawner, "quit", probation=20
    )
    assert spawner.procs[0].poll() == 0  # the old process watched until the new one quit
    assert time.monotonic() - (old.retired_at or 0.0) < 10  # not until the probation's end
    assert outcome == "replaced" and (old.retired, exits.count) == (1, 1)
    assert len(spawner.procs) == 1  # nothing relaunched
    assert (app_dir / "trayupdater").read_bytes().startswith(b"#!" + sys.executable.encode())
    state = SelfUpdateState.load(tmp_path / "data" / "selfupdate.json")
    assert state.blocked == [] and state.last_result["outcome"] == "replaced"


@posix_only
def test_a_quit_of_the_old_process_ends_the_probation_without_a_rollback(
    feed: ReleaseFeed, tmp_path: Path, app_dir: Path, spawner: Spawner
) -> None:
    old = OldApp()
    old.on_retire = lambda: threading.Timer(0.5, old.quit.set).start()  # during the watch
    _, outcome, old, exits = _hand_over_on_probation(
        feed, tmp_path, app_dir, spawner, "ok", probation=20, old=old
    )
    assert old.quit.is_set()  # it watched until told to quit...
    assert time.monotonic() - (old.retired_at or 0.0) < 5  # ...and then exited at once
    assert outcome == "replaced" and (old.retired, exits.count) == (1, 1)
    assert len(spawner.procs) == 1 and spawner.procs[0].poll() is None  # 2.0.0 serves on
    assert _get(old.port) == "2.0.0"
    state = SelfUpdateState.load(tmp_path / "data" / "selfupdate.json")
    assert state.blocked == [] and state.last_result["outcome"] == "replaced"


# --- the successor's side ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_process_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    # take_handover() marks the process as a successor; each test is a fresh process.
    monkeypatch.setattr(handover, "_started_by_handover", False)


def test_take_handover_only_when_started_by_a_self_update() -> None:
    assert take_handover({}) is None
    env = {ENV_HANDOVER: "not-a-port"}
    with pytest.raises(SelfUpdateError, match="PORT:TOKEN"):
        take_handover(env)
    assert ENV_HANDOVER not in env  # never passed on to the child servers


def test_take_handover_refused_by_the_predecessor() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def refuse() -> None:
            conn, _ = server.accept()
            conn.recv(1000)
            conn.sendall(b'{"error": "expected version 2.0.0"}\n')
            conn.close()

        thread = threading.Thread(target=refuse)
        thread.start()
        with pytest.raises(SelfUpdateError, match=r"expected version 2\.0\.0"):
            take_handover({ENV_HANDOVER: f"{port}:tok"}, version="1.0.0")
        thread.join()


def test_share_grant_round_trip() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        grant = handover._grant(listener, "windows", 1234, lambda s, pid: b"wsa-blob")
        assert base64.b64decode(grant["share"]) == b"wsa-blob"
        received: list[bytes] = []

        def fromshare(data: bytes) -> socket.socket:
            received.append(data)
            return socket.socket()

        handover._socket_from_grant(grant, fromshare).close()
        assert received == [b"wsa-blob"]
        assert handover._grant(listener, "linux", 1, lambda s, p: b"") == {"fd": listener.fileno()}


class Controller:
    """The update worker as a successor sees it: status snapshots and a subscription."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.listeners: list[Callable[[Any], None]] = []

    def status(self) -> Any:
        return type("Status", (), {"phase": self.phase, "error": "child failed"})()

    def subscribe(self, callback: Callable[[Any], None]) -> None:
        self.listeners.append(callback)

    def publish(self, phase: str) -> None:
        self.phase = phase
        for callback in self.listeners:
            callback(self.status())


@pytest.mark.parametrize(
    ("phases", "starts", "report"),
    [
        (["starting", "running", "running"], 1, {"ready": True}),
        (["no_version"], 1, {"ready": True}),
        (["starting", "error", "running"], 0, {"failed": "child failed"}),
    ],
)
def test_successor_serves_only_once_its_child_is_up(
    phases: list[str], starts: int, report: dict[str, Any]
) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        successor = handover.Successor(handover._Channel(ours), socket.socket(), 0)
        controller = Controller(phases[0])
        started: list[str] = []
        successor.serve_when_ready(controller, lambda: started.append(controller.phase))
        for phase in phases[1:]:
            controller.publish(phase)
        assert len(started) == starts
        peer = handover._Channel(theirs)
        assert peer.recv(5) == report
        assert peer.recv(0.2) is None  # reported once
        successor.socket.close()


def test_successor_reports_failure_when_it_cannot_serve() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        successor = handover.Successor(handover._Channel(ours), socket.socket(), 0)

        def boom() -> None:
            raise OSError("bad file descriptor")

        successor.serve_when_ready(Controller("running"), boom)
        message = handover._Channel(theirs).recv(5)
        assert message is not None and "bad file descriptor" in message["failed"]
        successor.socket.close()


def test_from_config_is_none_unless_frozen_with_a_repo(tmp_path: Path) -> None:
    config = replace(Config(), data_dir=tmp_path, self_update_repo=APP_REPO)
    assert SelfUpdater.from_config(config) is None  # tests run from source
    exe = tmp_path / "trayupdater"
    with pytest.raises(SelfUpdateError, match="self_update_repo"):
        SelfUpdater(replace(config, self_update_repo=None), Installation(exe, exe, "file", "linux"))


def test_leftover_wait_is_bounded() -> None:
    started = time.monotonic()
    assert handover._wait_gone(os.getpid(), 0.3) is False
    assert time.monotonic() - started < 5
