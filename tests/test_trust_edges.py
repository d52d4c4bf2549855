"""Hostile or broken releases and repositories against the self-update and the TUF source.

Each test is one input an attacker or a botched publish can produce, played against the
real code on real files (and, for TUF, a real repository made by the publisher CLI and
served over loopback), with what the user relies on asserted: the running version keeps
serving, one clear sentence, nothing written outside the app's folders.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import tarfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from static_server import StaticServer
from tuf.api.metadata import TargetFile
from tuf_support import Publisher, pipeline, tuf_config

from trayupdater.config import Config
from trayupdater.demo import asset_name
from trayupdater.errors import TrayUpdaterError
from trayupdater.feed import ReleaseFeed
from trayupdater.installation import Installation
from trayupdater.platforms import Platform
from trayupdater.selfupdate import SelfUpdater
from trayupdater.store import State

APP_REPO = "demo/trayupdater"
LINUX = Platform("linux", "x86_64")
ASSET = asset_name(Platform.current())

posix_only = pytest.mark.skipif(os.name != "posix", reason="symlinks in archives")


def _updater(feed: ReleaseFeed, tmp_path: Path, inst: Installation, **options: Any) -> SelfUpdater:
    """A self-updater of ``inst`` running 1.0.0; ``options`` go to SelfUpdater."""
    values: dict[str, Any] = {
        "repo": "demo/simple-server",
        "api_url": feed.url,
        "data_dir": tmp_path / "data",
        "self_update_repo": APP_REPO,
        "probation_seconds": 0.2,
    }
    config = replace(Config(), **values)
    return SelfUpdater(config, inst, platform=LINUX, current_version=lambda: "1.0.0", **options)


def _tgz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def _stage(updater: SelfUpdater) -> Path:
    plan = updater.plan()
    assert plan.release is not None and plan.asset is not None, plan
    return updater.stage(plan.release, plan.asset)


# --- self-update: what the archive holds ----------------------------------------------------


@posix_only
def test_a_top_level_link_to_the_build_folder_stages_the_build_itself(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """A tarball with ``trayupdater-2.0.0/`` and a convenience link ``current`` to it: the
    link sorts first; moved out of the archive's folder it points beside the installation
    (at nothing), so a sound build could not be staged."""
    folder = tmp_path / "app" / "trayupdater"
    (folder / "_internal").mkdir(parents=True)
    (folder / "trayupdater").write_text("old")
    inst = Installation(folder, folder / "trayupdater", "folder", "linux")
    archive = _tgz(
        {
            "trayupdater-2.0.0/trayupdater": b"new",
            "trayupdater-2.0.0/_internal/libpython.so": b"lib",
        },
        links={"current": "trayupdater-2.0.0"},
    )
    feed.publish(APP_REPO, "v2.0.0", {"trayupdater_Linux_x86_64.tar.gz": archive})
    staged = _stage(_updater(feed, tmp_path, inst))
    assert not staged.is_symlink(), f"staged a link to {os.readlink(staged)}"
    assert (staged / "trayupdater").read_bytes() == b"new"
    assert (staged / "_internal" / "libpython.so").read_bytes() == b"lib"
    assert (folder / "trayupdater").read_text() == "old"


@posix_only
def test_a_top_level_link_named_like_the_installation_never_stages_the_running_build(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """The link's target, relative, names the installed folder once the link is moved
    beside it: the "new" build would be the running one, swapped with itself."""
    folder = tmp_path / "app" / "trayupdater"
    (folder / "_internal").mkdir(parents=True)
    (folder / "trayupdater").write_text("old")
    inst = Installation(folder, folder / "trayupdater", "folder", "linux")
    archive = _tgz(
        {"trayupdater/trayupdater": b"new", "trayupdater/_internal/lib.so": b"lib"},
        links={"a": "trayupdater"},
    )
    feed.publish(APP_REPO, "v2.0.0", {"trayupdater_Linux_x86_64.tar.gz": archive})
    staged = _stage(_updater(feed, tmp_path, inst))
    assert not staged.is_symlink(), f"staged a link to {os.readlink(staged)}"
    assert (staged / "trayupdater").read_bytes() == b"new"


# --- TUF: targets the publisher signed, but this client cannot use ---------------------------


def _resign_newest(publisher: Publisher, change: Callable[[TargetFile], None]) -> None:
    """Publish 1.0.0 and 1.1.0, then sign 1.1.0's target again with ``change`` made."""
    publisher.add("1.0.0")
    publisher.add("1.1.0")
    repository = publisher.library()
    with repository.edit_targets() as targets:
        (path,) = [p for p in targets.targets if p.startswith("1.1.0/")]
        change(targets.targets[path])
    repository.do_snapshot()
    repository.do_timestamp()


@pytest.mark.parametrize("algorithm", ["blake3", "shake_128", "sha999"])
def test_a_target_with_a_hash_this_client_cannot_compute_is_skipped_not_called_tampered(
    tmp_path: Path, publisher: Publisher, server: StaticServer, algorithm: str
) -> None:
    """Beside its SHA-256, the target lists a hash python's hashlib lacks. ngclient cannot
    verify the file then, so every check downloaded the whole version and refused it as
    "tampered with or corrupted": a false alarm about the mirror, repeated at each check,
    while the version could never install."""
    _resign_newest(publisher, lambda target: target.hashes.update({algorithm: "ab" * 32}))
    config = tuf_config(server.url, publisher, tmp_path / "data")
    p = pipeline(config)
    plan = p.plan(State())
    assert plan.latest == "1.0.0", "a version this client cannot verify is not offered"
    assert p.source.check().skipped_tags == ["1.1.0"]
    p.install(*p.require_asset(plan))
    assert not server.hits(f"/targets/1.1.0/{ASSET}")


class _OldApp:
    """The running app's side of ``Handover``: a real listening socket."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))

    def listening_socket(self) -> socket.socket:
        return self.sock

    def retire(self) -> None:
        self.sock.close()

    def quitting(self) -> bool:
        return False


@posix_only
def test_a_link_to_a_sibling_folder_never_leads_the_build_outside_the_installation(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """``build/trayupdater -> ../other/trayupdater`` stays inside the unpacked archive, so
    extraction lets it be; but ``build/`` is then moved up to be the staged build and
    ``other/`` deleted, and the link, relative, leads to ``other/trayupdater`` *beside the
    installation*: a program no checksum covered was made executable and started as the
    new build."""
    app = tmp_path / "app"
    folder = app / "trayupdater"
    (folder / "_internal").mkdir(parents=True)
    (folder / "trayupdater").write_text("old")
    marker = tmp_path / "ran"
    foreign = app / "other" / "trayupdater"  # someone else's program beside the install
    foreign.parent.mkdir()
    foreign.write_text(f"#!/bin/sh\necho ran > {marker}\n")
    foreign.chmod(0o644)
    inst = Installation(folder, folder / "trayupdater", "folder", "linux")
    archive = _tgz(
        {"build/_internal/lib.so": b"lib", "other/trayupdater": b"#!/bin/sh\nexit 0\n"},
        links={"build/trayupdater": "../other/trayupdater"},
    )
    feed.publish(APP_REPO, "v2.0.0", {"trayupdater_Linux_x86_64.tar.gz": archive})
    exits: list[int] = []
    updater = _updater(
        feed, tmp_path, inst, ready_timeout=3.0, exit_process=lambda: exits.append(1)
    )
    with pytest.raises(TrayUpdaterError, match="outside") as caught:
        updater.check_and_apply(_OldApp())
    assert "\n" not in str(caught.value)
    assert not marker.exists(), "a program outside the verified build was started"
    assert stat.S_IMODE(foreign.stat().st_mode) == 0o644, "a file beside the app was changed"
    assert (folder / "trayupdater").read_text() == "old"
    assert not exits
