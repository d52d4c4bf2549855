"""``trayupdater demo``: the whole update cycle offline, on real code paths.

A local release feed (a real HTTP server speaking GitHub's API) publishes goreleaser-style
archives of a small demo server; the app runs against it exactly as it would against
GitHub, installs the first version, and a newer one is published a few seconds later so a
new user sees an update happen and can roll back.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from trayupdater.config import Config
from trayupdater.demo_server import render_script
from trayupdater.errors import TrayUpdaterError
from trayupdater.feed import ReleaseFeed
from trayupdater.instance_lock import LOCK_FILE, InstanceLock
from trayupdater.platforms import Platform
from trayupdater.status import Phase, Status

log = logging.getLogger(__name__)

DEMO_REPO = "demo/simple-server"
GORELEASER_OS = {"linux": "Linux", "darwin": "Darwin", "windows": "Windows"}
GORELEASER_ARCH = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
# Written into every folder the demo creates: only such a folder may be emptied by a demo.
DEMO_MARKER = ".trayupdater-demo"
NEW_VERSION_NOTES = "Faster start-up and a friendlier front page\n\n* details in the demo"


def asset_name(platform: Platform, program: str = "simple-server") -> str:
    """The name goreleaser gives simple-server's archive for ``platform``."""
    ext = "zip" if platform.os == "windows" else "tar.gz"
    return f"{program}_{GORELEASER_OS[platform.os]}_{GORELEASER_ARCH[platform.arch]}.{ext}"


def child_archive(
    version: str,
    platform: Platform | None = None,
    *,
    behaviour: Mapping[str, object] | None = None,
    program: str = "simple-server",
) -> tuple[str, bytes]:
    """A release archive holding an executable demo server that answers ``version``."""
    platform = platform or Platform.current()
    script = render_script(version, behaviour).encode()
    exe_name = program + (".py" if platform.os == "windows" else "")
    buffer = io.BytesIO()
    if platform.os == "windows":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(exe_name, script)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            info = tarfile.TarInfo(exe_name)
            info.size, info.mode, info.mtime = len(script), 0o755, int(time.time())
            archive.addfile(info, io.BytesIO(script))
            readme = f"demo simple-server {version}\n".encode()
            info = tarfile.TarInfo("README.md")
            info.size, info.mode = len(readme), 0o644
            archive.addfile(info, io.BytesIO(readme))
    return asset_name(platform, program), buffer.getvalue()


def publish_version(
    feed: ReleaseFeed,
    version: str,
    *,
    repo: str = DEMO_REPO,
    behaviour: Mapping[str, object] | None = None,
    **kwargs: object,
) -> None:
    name, data = child_archive(version, behaviour=behaviour, program=repo.split("/")[1])
    feed.publish(repo, f"v{version}", {name: data}, **kwargs)  # type: ignore[arg-type]


def demo_config(base: Config, feed_url: str, data_dir: Path) -> Config:
    command = base.command
    if getattr(sys, "frozen", False):
        # No Python to run the demo child script with: the app serves it itself.
        command = (sys.executable, "demo-child", "{exe}", "{port}")
    elif sys.platform == "win32":
        command = (sys.executable, "{exe}", "{port}")  # the demo child is a Python script
    return replace(
        base,
        repo=DEMO_REPO,
        api_url=feed_url,
        token=None,
        channel="stable",
        check_interval=5.0,
        probation_seconds=5.0,
        asset_pattern=None,
        exe_name=None,
        command=command,
        data_dir=data_dir,
        self_update_repo=None,
    )


def prepare_demo_folder(folder: Path) -> None:
    """Make ``folder`` an empty demo data folder, or refuse with a clear error.

    Only a folder holding the demo's marker (one an earlier demo created) is emptied; a
    missing or empty folder is taken; anything else is the user's and stays untouched.
    """
    marker = folder / DEMO_MARKER
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise TrayUpdaterError(f"demo: {folder} exists and is not a folder; choose another")
        if marker.is_file():
            _empty_unless_running(folder)
        elif any(folder.iterdir()):
            raise TrayUpdaterError(
                f"demo: {folder} is not empty and was not created by the demo; refusing to "
                "use it (the demo empties its folder). Choose a new or empty folder."
            )
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text("created by `trayupdater demo`; the demo may empty this folder\n")


def _empty_unless_running(folder: Path) -> None:
    """Empty a demo folder, unless a demo runs in it: its files are not ours to delete."""
    lock = InstanceLock(folder)
    try:
        free = lock.acquire()
    except OSError:  # a file system without locks: as before there were any
        free = True
    try:
        if not free:
            raise TrayUpdaterError(
                f"demo: a demo is already running in {folder}; quit it first, or give this "
                "one another folder with --data-dir"
            )
        for entry in folder.iterdir():
            if entry.name == LOCK_FILE:
                continue  # never deleted: a launch could lock the old file and another a new one
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    finally:
        lock.release()


class Story:
    """One readable line per event of the demo (no ``-v`` needed), from status changes:
    downloading, installed, switched, rolled back, a problem."""

    def __init__(self, first: Status, write: Callable[[str], None] | None = None) -> None:
        self._last = first
        self._write = write or (lambda line: print(f"demo: {line}", flush=True))

    def __call__(self, status: Status) -> None:
        old, self._last = self._last, status
        for line in story_lines(old, status):
            self._write(line)


def story_lines(old: Status, new: Status) -> list[str]:
    lines = []
    if new.phase is Phase.DOWNLOADING and old.phase is not Phase.DOWNLOADING:
        lines.append(f"downloading {new.latest or 'the new version'} from the feed…")
    if new.message != old.message:
        message = new.message
        if message.startswith("Installed "):
            lines.append(f"{message.lower()} and serving it through {new.proxy_url}")
        elif message.startswith("Updated to "):
            version = message.removeprefix("Updated to ")
            lines.append(
                f"switched to {version}: the proxy moved over without dropping a request "
                f"(roll back with the tray menu or `trayupdater rollback`)"
            )
        elif message.startswith(("Rolled back to", "Automatically rolled back to")):
            lines.append(message[:1].lower() + message[1:])
    if new.error and new.error != old.error:
        from trayupdater.announce import one_sentence

        lines.append(f"problem: {one_sentence(new.error)}")
    return lines


class Demo:
    """The feed plus a timeline of releases; the caller runs the app against ``config``."""

    def __init__(self, base: Config, data_dir: Path, *, publish_after: float = 12.0) -> None:
        prepare_demo_folder(data_dir)  # every demo starts from a clean slate
        self.feed = ReleaseFeed().start()
        self.config = demo_config(base, self.feed.url, data_dir)
        self.publish_after = publish_after
        self._stop = threading.Event()
        publish_version(self.feed, "1.0.0")

    def start_timeline(self) -> None:
        threading.Thread(target=self._timeline, name="demo-timeline", daemon=True).start()

    def _timeline(self) -> None:
        if self._stop.wait(self.publish_after):
            return
        publish_version(self.feed, "1.1.0", notes=NEW_VERSION_NOTES)
        print("demo: published 1.1.0 on the release feed; the app checks every 5 s", flush=True)

    def watch(self, app: Any) -> None:
        """Tell the story of the running ``app`` on the terminal, one line per event."""
        app.updater.subscribe(Story(app.updater.status()))

    def close(self) -> None:
        self._stop.set()
        self.feed.close()

    def banner(self) -> str:
        url = f"http://{self.config.bind}:{self.config.port}"
        data = os.fspath(self.config.data_dir)
        return (
            f"demo: release feed {self.feed.url} serves {DEMO_REPO} 1.0.0\n"
            f"demo: the app proxies {url}  (try: curl {url}/version)\n"
            f"demo: 1.1.0 is published in {self.publish_after:.0f} s; then roll back with\n"
            f"      trayupdater --data-dir {data} rollback   (or the tray menu)\n"
            f"demo: status: trayupdater --data-dir {data} status; stop with Ctrl-C"
        )
