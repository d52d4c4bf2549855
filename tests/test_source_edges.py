"""Edges where network input enters, found by attacking them: each test failed before its fix.

Real parts, as in test_hostile_source: the local GitHub-API feed serving hand-made answers,
the real app with its proxy and child. Each asserts what a user relies on: the current
version keeps serving, the status says why in one sentence, nothing is written outside the
app's folders, and no unexpected exception reaches the update worker.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_for
from test_runtime import get, running

from trayupdater.app import App
from trayupdater.demo import DEMO_REPO, child_archive
from trayupdater.errors import ExtractionError
from trayupdater.extract import MAX_DEPTH, extract
from trayupdater.feed import ReleaseFeed
from trayupdater.release_model import Release
from trayupdater.sources.github import GitHubSource
from trayupdater.status import Command, Phase

NAME, DATA = child_archive("1.1.0")  # the asset the picker takes on this machine


def _renamed_release(feed: ReleaseFeed, new_name: str) -> dict:
    """v1.1.0 published with real bytes, its program asset then listed as ``new_name``
    (the asset API URL still serves the bytes, by id)."""
    feed.publish("other/repo", "v1.1.0", {NAME: DATA}, checksums=False)
    body = feed.latest_json("other/repo")
    for asset in body["assets"]:
        if asset["name"] == NAME:
            asset["name"] = new_name
    return body


def _assert_refused_clearly(app: App) -> None:
    status = app.updater.request(Command.CHECK)
    assert status.active == "1.0.0" and status.phase is Phase.RUNNING
    assert status.error, "no error shown"
    assert "\n" not in status.error and len(status.error) < 400  # one sentence
    assert "Internal error" not in status.error, status.error  # handled at the boundary
    assert get(app)[:2] == (200, "1.0.0")
    assert app.store.installed() == ["1.0.0"]


# --- asset names that are valid JSON strings but no file name ---------------------------------


def test_an_asset_name_with_a_lone_surrogate_is_refused_at_the_boundary(
    feed: ReleaseFeed, app: App
) -> None:
    """JSON may escape half a UTF-16 pair ("\\ud800"); json.loads keeps it as a lone
    surrogate, which no file system encoding can write: the download's open() raised
    UnicodeEncodeError, which reached the worker as an internal error."""
    stem, dot, suffix = NAME.partition(".")
    feed.publish_raw(DEMO_REPO, _renamed_release(feed, f"{stem}\ud800{dot}{suffix}"))
    _assert_refused_clearly(app)


# --- archives nested deeper than Python recurses ----------------------------------------------


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_deeply_nested_archive_is_refused_and_the_old_version_serves_after_a_restart(
    feed: ReleaseFeed, app: App
) -> None:
    """One member 1,200 folders deep (a 5 KB tar.gz; the folders it implies were counted
    nowhere): looking for the program (os.walk) and every clean-up (shutil.rmtree, whose
    ignore_errors covers OSError only) raised RecursionError. The check was an internal
    error, the half-built version stayed in versions/, and the clean-up at the next start
    failed the same way: after a restart nothing served (503)."""
    if not NAME.endswith(".tar.gz"):
        pytest.skip("the asset picked on this machine is not a tar.gz")
    deep = "a/" * 1200 + "x"
    feed.publish(
        DEMO_REPO, "v1.1.0", {NAME: _tar_gz({"simple-server": b"#!/bin/sh\n", deep: b"x"})}
    )
    try:
        _assert_refused_clearly(app)
        assert "nested more than" in str(app.updater.status().error)
        assert sorted(p.name for p in (app.config.data_dir / "versions").iterdir()) == ["1.0.0"]
        app.stop()
        again = App(app.config)
        again.start()
        try:
            wait_for(running(again, "1.0.0"), what="1.0.0 serving after a restart")
            assert get(again)[:2] == (200, "1.0.0")
        finally:
            again.stop()
    finally:
        # Should the tree be left again, pytest's own clean-up (shutil.rmtree) of old temp
        # folders would fail on it for every later run on this machine.
        app.stop()
        _remove_deep(app.config.data_dir / "versions")


def _remove_deep(root: Path) -> None:
    """Remove a folder however deep, without recursion (links are removed, not followed)."""
    folders, todo = [], [root]
    while todo:
        folder = todo.pop()
        folders.append(folder)
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                todo.append(Path(entry.path))
            else:
                os.unlink(entry.path)
    for folder in reversed(folders):
        os.rmdir(folder)


def test_extract_refuses_a_path_deeper_than_the_limit_and_leaves_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "deep.tar.gz"
    archive.write_bytes(_tar_gz({"b/" * (MAX_DEPTH + 1) + "x": b"x"}))
    dest = tmp_path / "out"
    with pytest.raises(ExtractionError, match="nested more than"):
        extract(archive, dest, asset_name="deep.tar.gz")
    assert list(dest.iterdir()) == []
    # As deep as allowed still unpacks.
    archive.write_bytes(_tar_gz({"b/" * (MAX_DEPTH - 1) + "x": b"x"}))
    extract(archive, dest, asset_name="deep.tar.gz")
    assert (dest.joinpath(*["b"] * (MAX_DEPTH - 1)) / "x").read_bytes() == b"x"


# --- API answers in a valid encoding -----------------------------------------------------------


@contextlib.contextmanager
def _serving(body: bytes, headers: dict[str, str]) -> Iterator[str]:
    """A loopback server answering every GET with ``body`` and ``headers``; its base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_gzip_answer_in_several_members_is_read_whole(feed: ReleaseFeed) -> None:
    """RFC 1952: a gzip body is a series of members (a server compressing as it streams
    writes one per flush; urllib3, curl and browsers read them all). Only the first was
    decoded, the rest dropped without a word: the release JSON ended mid-way and the check
    failed with "invalid JSON"."""
    feed.publish("acme/app", "v1.1.0", {NAME: DATA})
    data = json.dumps(feed.latest_json("acme/app")).encode()
    half = len(data) // 2
    body = gzip.compress(data[:half]) + gzip.compress(data[half:])
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    release = _checked(body, headers)
    assert release is not None and release.tag == "v1.1.0"
    assert release.asset(NAME) is not None


def test_bytes_after_a_complete_gzip_member_are_still_ignored(feed: ReleaseFeed) -> None:
    """What was tolerated before stays so (as urllib3 does): padding after the last member."""
    feed.publish("acme/app", "v1.1.0", {NAME: DATA})
    data = json.dumps(feed.latest_json("acme/app")).encode()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    release = _checked(gzip.compress(data) + b"\0" * 100, headers)
    assert release is not None and release.tag == "v1.1.0"


def _checked(body: bytes, headers: dict[str, str]) -> Release | None:
    """What a check finds when the API answers ``body`` with ``headers``."""
    with _serving(body, headers) as api:
        source = GitHubSource("acme/app", api_url=api, retries=0)
        try:
            return source.check().release
        finally:
            source.close()


def test_folders_an_archive_only_implies_count_against_the_entry_limit(tmp_path: Path) -> None:
    """Folders named only inside a member's path were created without being counted, and
    cost no bytes: 10,000 members (the entry limit) 99 folders deep each, a 140 KB tar.gz,
    made about a million folders (some 4 GB of ext4 blocks, or the disk's last inodes)
    past both limits. Here at a small scale: 30 members, 1,200 folders, a limit of 100."""
    archive = tmp_path / "folders.tar.gz"
    archive.write_bytes(_tar_gz({f"{i}/" + "a/" * 39 + "x": b"" for i in range(30)}))
    dest = tmp_path / "out"
    with pytest.raises(ExtractionError, match="more than 100 entries"):
        extract(archive, dest, asset_name="folders.tar.gz", max_files=100)
    assert list(dest.iterdir()) == []
    # Three files and the three folders they imply fit a limit of six.
    archive.write_bytes(_tar_gz({"e/f/x": b"", "d/x": b"", "d/y": b""}))
    extract(archive, tmp_path / "ok", asset_name="folders.tar.gz", max_files=6)


# --- versions too long to name a folder --------------------------------------------------------


def test_a_tag_too_long_for_a_folder_name_is_not_taken_for_a_version(
    feed: ReleaseFeed, app: App
) -> None:
    """A 251-character tag that parses as a version: the whole asset was downloaded and
    verified, then the version folder (its name plus ".tmp-XXXXXXXX") was too long for the
    file system, and the user read "cannot store ... File name too long", a storage
    failure, on every check. It is a tag that is not a version: skipped, nothing fetched."""
    tag = "v" + "1" * 250
    feed.publish(DEMO_REPO, tag, {NAME: DATA})
    downloads = feed.stats.downloads  # those of 1.0.0
    status = app.updater.request(Command.CHECK)
    assert status.active == "1.0.0" and status.phase is Phase.RUNNING
    assert "File name too long" not in str(status.error), status.error
    assert feed.stats.downloads == downloads
    assert get(app)[:2] == (200, "1.0.0")


def test_an_asset_name_of_up_to_255_bytes_downloads(feed: ReleaseFeed, app: App) -> None:
    """Names up to 255 bytes are accepted (a file name's limit), but the download's part
    file adds ".<12 hex>.part" to the name: from 238 bytes on it could not be created, and
    the check failed with "cannot store ... File name too long", a storage failure."""
    stem, dot, suffix = NAME.partition(".")
    long_name = stem + "_" + "x" * (250 - len(NAME)) + dot + suffix
    assert len(long_name.encode()) == 251
    feed.publish(DEMO_REPO, "v1.1.0", {long_name: child_archive("1.1.0")[1]})
    status = app.updater.request(Command.CHECK)
    assert status.error is None, status.error
    assert status.active == "1.1.0"
