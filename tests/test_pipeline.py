"""`trayupdater check` end to end: a real local GitHub-API feed, real archives, real files."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from support import Instance

from trayupdater.cli import main
from trayupdater.demo import DEMO_REPO, child_archive, publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.store import VersionStore


def run_check(feed: ReleaseFeed, data: Path, *extra: str) -> int:
    """The CLI in-process, pointed at the feed and a fresh data folder (port unused)."""
    return main([*Instance(feed, data, 0).args, *extra])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "none.toml").write_text("")
    return tmp_path / "data"


def installed(data: Path) -> list[str]:
    return VersionStore(data).installed()


def test_dry_run_reports_and_installs_nothing(
    feed: ReleaseFeed, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_version(feed, "1.2.0")
    assert run_check(feed, data, "check", "--dry-run", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["latest"] == "1.2.0" and report["current"] is None
    assert report["asset"] == child_archive("1.2.0")[0]
    assert report["update_available"] is True and report["installed"] is None
    assert installed(data) == []


def test_check_installs_a_verified_executable(
    feed: ReleaseFeed, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_version(feed, "1.2.0")
    assert run_check(feed, data, "check") == 0
    out = capsys.readouterr().out
    assert "latest 1.2.0" in out and "installed 1.2.0" in out
    version = VersionStore(data).get("1.2.0")
    assert version is not None and os.access(version.executable, os.X_OK)
    assert version.executable.name == "simple-server"
    assert list((data / "downloads").iterdir()) == []  # nothing left behind


def test_checksums_file_is_used_without_github_digest(feed: ReleaseFeed, data: Path) -> None:
    publish_version(feed, "1.2.0", digests=False)
    assert run_check(feed, data, "check") == 0
    assert installed(data) == ["1.2.0"]


def test_tampered_download_is_refused(
    feed: ReleaseFeed, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_version(feed, "1.2.0")
    name, _ = child_archive("1.2.0")
    _, other = child_archive("6.6.6")
    feed.replace_asset(DEMO_REPO, "v1.2.0", name, other)
    assert run_check(feed, data, "check") == 1
    err = capsys.readouterr().err
    assert "sha256" in err.lower() or "checksum" in err.lower()
    assert "Traceback" not in err
    assert installed(data) == []
    assert list((data / "downloads").iterdir()) == []  # a bad download is not resumed from


def test_unverifiable_release_refused_unless_opted_out(
    feed: ReleaseFeed, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_version(feed, "1.2.0", digests=False, checksums=False)
    assert run_check(feed, data, "check") == 1
    assert "require_checksum" in capsys.readouterr().err
    assert installed(data) == []
    assert run_check(feed, data, "--set", "require_checksum=false", "check") == 0
    assert installed(data) == ["1.2.0"]


def test_no_asset_for_this_platform(
    feed: ReleaseFeed, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed.publish(DEMO_REPO, "v1.2.0", {"simple-server_Plan9_mips.tar.gz": b"x"})
    assert run_check(feed, data, "check") == 1
    err = capsys.readouterr().err
    assert "no asset for" in err and "simple-server_Plan9_mips.tar.gz" in err


def test_cut_download_resumes_on_the_next_check(feed: ReleaseFeed, data: Path) -> None:
    name, blob = child_archive("1.2.0")
    padded = _pad_archive(blob)
    feed.publish(DEMO_REPO, "v1.2.0", {name: padded})
    feed.inject("cut", name)
    assert run_check(feed, data, "check") == 1
    assert installed(data) == []
    assert run_check(feed, data, "check") == 0
    assert feed.stats.range_requests >= 1
    assert installed(data) == ["1.2.0"]


def test_corrupt_transfer_then_recovery(feed: ReleaseFeed, data: Path) -> None:
    publish_version(feed, "1.2.0")
    feed.inject("corrupt", child_archive("1.2.0")[0])
    assert run_check(feed, data, "check") == 1
    assert installed(data) == []
    assert run_check(feed, data, "check") == 0
    assert installed(data) == ["1.2.0"]


@pytest.mark.parametrize("member", ["../escape", "/abs/escape"])
def test_malicious_archive_is_refused(
    feed: ReleaseFeed, data: Path, member: str, capsys: pytest.CaptureFixture[str]
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        payload = b"#!/bin/sh\necho pwned\n"
        info = tarfile.TarInfo(member)
        info.size, info.mode = len(payload), 0o755
        archive.addfile(info, io.BytesIO(payload))
    name, _ = child_archive("1.2.0")
    feed.publish(DEMO_REPO, "v1.2.0", {name: buffer.getvalue()})
    assert run_check(feed, data, "check") == 1
    assert "Traceback" not in capsys.readouterr().err
    assert installed(data) == []
    assert not (data / "escape").exists() and not (data / "versions" / "escape").exists()


def test_rate_limit_is_a_clear_error(
    feed: ReleaseFeed, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed.inject("ratelimit", "/releases")
    assert run_check(feed, data, "check") == 1
    assert "rate limit" in capsys.readouterr().err


def _pad_archive(blob: bytes, padding: bytes | None = None) -> bytes:
    """The archive with a file of ``padding`` added (default: ~2 MB that does not compress,
    so that a cut is mid-body)."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as src,
        tarfile.open(fileobj=out, mode="w:gz") as dst,
    ):
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member))
        padding = os.urandom(2_000_000) if padding is None else padding
        info = tarfile.TarInfo("padding.bin")
        info.size = len(padding)
        dst.addfile(info, io.BytesIO(padding))
    return out.getvalue()


def test_oversized_download_is_refused(
    feed: ReleaseFeed, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, blob = child_archive("1.2.0")
    feed.publish(DEMO_REPO, "v1.2.0", {name: _pad_archive(blob)})
    assert run_check(feed, data, "--set", "max_download_bytes=100000", "check") == 1
    err = capsys.readouterr().err
    assert "100000" in err and "Traceback" not in err
    assert installed(data) == []
    assert list((data / "downloads").iterdir()) == []
