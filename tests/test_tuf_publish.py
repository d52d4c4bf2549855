"""``trayupdater repo …``: the publisher's CLI, on real folders and real keys."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root, Targets, Timestamp
from tuf_support import Publisher

from trayupdater.publish import parse_duration
from trayupdater.tuf_format import check_folder
from trayupdater.tuf_keys import KeyStore
from trayupdater.tuf_repository import FolderRepository, PublishError


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trayupdater", "repo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def load(path: Path) -> Metadata:
    return Metadata.from_file(str(path))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_lays_out_a_repository_with_its_keys_beside_it(tmp_path: Path) -> None:
    done = cli("init", "repo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    root_file = tmp_path / "repo" / "metadata" / "root.json"
    assert f"ship this file with the app as its trusted root: {root_file}" in done.stdout
    names = sorted(p.name for p in (tmp_path / "repo" / "metadata").iterdir())
    assert names == [
        "1.root.json",
        "1.snapshot.json",
        "1.targets.json",
        "root.json",
        "timestamp.json",
    ]
    assert (tmp_path / "repo" / "targets").is_dir()
    keys = tmp_path / "keys"
    assert sorted(p.name for p in keys.iterdir()) == [
        "root.pem",
        "signed-versions.json",  # what the keys signed: an older folder is refused
        "snapshot.pem",
        "targets.pem",
        "timestamp.pem",
    ]
    if os.name == "posix":
        assert mode(keys) == 0o700
        assert {mode(p) for p in keys.iterdir()} == {0o600}
    root = load(root_file).signed
    assert isinstance(root, Root)
    assert root.consistent_snapshot
    assert {name: (len(r.keyids), r.threshold) for name, r in root.roles.items()} == {
        name: (1, 1) for name in ("root", "targets", "snapshot", "timestamp")
    }
    assert len({r.keyids[0] for r in root.roles.values()}) == 4  # one key per role
    # Lifetimes: timestamp 7 days, root and targets longer.
    now = datetime.now(timezone.utc)
    lifetime = {
        role: load(tmp_path / "repo" / "metadata" / name).signed.expires - now
        for role, name in (
            ("root", "root.json"),
            ("targets", "1.targets.json"),
            ("timestamp", "timestamp.json"),
        )
    }
    assert timedelta(days=6.9) < lifetime["timestamp"] <= timedelta(days=7)
    assert lifetime["root"] > lifetime["targets"] > timedelta(days=30)


def test_init_never_overwrites_a_repository(tmp_path: Path) -> None:
    assert cli("init", "repo", cwd=tmp_path).returncode == 0
    before = (tmp_path / "repo" / "metadata" / "root.json").read_bytes()
    again = cli("init", "repo", cwd=tmp_path)
    assert again.returncode == 1
    assert "already holds a repository" in again.stderr
    assert (tmp_path / "repo" / "metadata" / "root.json").read_bytes() == before


def test_keys_inside_the_repository_are_refused(tmp_path: Path) -> None:
    done = cli("init", "repo", "--keys", "repo/keys", cwd=tmp_path)
    assert done.returncode == 1
    assert "inside the repository" in done.stderr
    assert not (tmp_path / "repo").exists()


def test_add_signs_each_file_with_its_version_in_custom_metadata(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path).init()
    archive = publisher.archive("1.2.0")
    done = cli("add", str(publisher.dir), "--version", "v1.2.0", str(archive))
    assert done.returncode == 0, done.stderr
    served = publisher.dir / "targets" / "v1.2.0" / archive.name
    assert served.read_bytes() == archive.read_bytes()
    targets = load(publisher.metadata / "2.targets.json").signed
    assert isinstance(targets, Targets)
    (info,) = targets.targets.values()
    assert info.path == f"v1.2.0/{archive.name}"
    assert info.length == archive.stat().st_size
    custom = info.custom["trayupdater"]
    assert custom["version"] == "1.2.0"
    assert datetime.fromisoformat(custom["published"].replace("Z", "+00:00")) <= datetime.now(
        timezone.utc
    )
    timestamp = load(publisher.metadata / "timestamp.json").signed
    assert isinstance(timestamp, Timestamp)
    assert timestamp.version == 2 and timestamp.snapshot_meta.version == 2


def test_a_published_version_never_changes(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path).init()
    archive = publisher.add("1.0.0")
    same = cli("add", str(publisher.dir), "--version", "1.0.0", str(archive))
    assert same.returncode == 0 and "already published" in same.stdout
    assert not (publisher.metadata / "3.targets.json").exists()  # nothing re-signed
    archive.write_bytes(archive.read_bytes() + b"changed")
    other = cli("add", str(publisher.dir), "--version", "1.0.0", str(archive))
    assert other.returncode == 1
    assert "already published with other files" in other.stderr


@pytest.mark.parametrize(
    ("version", "why"),
    [("latest", "is not a version"), ("..", "relative folder"), ("1.0/x", "path separator")],
)
def test_a_version_that_is_not_a_safe_version_folder_is_refused(
    tmp_path: Path, version: str, why: str
) -> None:
    publisher = Publisher(tmp_path).init()
    archive = publisher.archive("1.0.0")
    done = cli("add", str(publisher.dir), "--version", version, str(archive))
    assert done.returncode == 1 and why in done.stderr
    assert not (publisher.metadata / "2.targets.json").exists()


def test_two_files_of_one_name_or_a_missing_file_change_nothing(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path).init()
    first = publisher.archive("1.0.0")
    second = tmp_path / "elsewhere" / first.name
    second.parent.mkdir()
    second.write_bytes(b"other")
    twice = cli("add", str(publisher.dir), "--version", "1.0.0", str(first), str(second))
    assert twice.returncode == 1 and "same name" in twice.stderr
    missing = cli("add", str(publisher.dir), "--version", "1.0.0", str(tmp_path / "nope.tar.gz"))
    assert missing.returncode == 1 and "is not a file" in missing.stderr
    assert not (publisher.dir / "targets" / "1.0.0").exists()
    assert not (publisher.metadata / "2.targets.json").exists()


def test_an_older_version_is_published_with_a_warning(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path).init()
    publisher.add("1.1.0")
    done = cli("add", str(publisher.dir), "--version", "1.0.5", str(publisher.archive("1.0.5")))
    assert done.returncode == 0
    assert "older than 1.1.0" in done.stderr


def test_a_key_that_is_not_the_roles_key_is_refused(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path).init()
    (publisher.keys / "targets.pem").unlink()
    KeyStore(publisher.keys).generate("targets")  # a stranger's key under the right name
    done = cli("add", str(publisher.dir), "--version", "1.0.0", str(publisher.archive("1.0.0")))
    assert done.returncode == 1
    assert "is not the targets key of this repository" in done.stderr
    assert not (publisher.metadata / "2.targets.json").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("30s", timedelta(seconds=30)),
        ("90m", timedelta(minutes=90)),
        (" 2D ", timedelta(days=2)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "0s", "-1d", "1w", "7 days", "99999999d"])
def test_durations_that_are_refused(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_refresh_re_signs_timestamp_and_snapshot_for_the_duration_given(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path).init("--expires", "12h")
    timestamp = load(publisher.metadata / "timestamp.json").signed
    now = datetime.now(timezone.utc)
    assert timedelta(hours=11.9) < timestamp.expires - now <= timedelta(hours=12)
    done = cli("refresh", str(publisher.dir), "--expires", "30s")
    assert done.returncode == 0, done.stderr
    assert "timestamp v2 valid until" in done.stdout
    timestamp = load(publisher.metadata / "timestamp.json").signed
    snapshot = load(publisher.metadata / "2.snapshot.json").signed
    for signed in (timestamp, snapshot):
        assert signed.version == 2
        assert signed.expires - datetime.now(timezone.utc) <= timedelta(seconds=30)
    assert not (publisher.metadata / "2.targets.json").exists()  # targets not due


def test_refresh_extends_targets_and_root_when_due_with_their_keys_at_hand(
    tmp_path: Path,
) -> None:
    publisher = Publisher(tmp_path).init()
    later = publisher.library(days_ago=-300)  # 300 days on: targets (180 d) lapsed, root due
    root_key = publisher.keys / "root.pem"
    offline = tmp_path / "offline-root.pem"
    root_key.rename(offline)  # the root key lives offline
    outcome = later.refresh()
    assert any("re-signed targets" in line for line in outcome.lines)
    assert any("root metadata expires" in w for w in outcome.warnings)
    offline.rename(root_key)
    outcome = publisher.library(days_ago=-300).refresh()
    assert any("re-signed root" in line for line in outcome.lines)
    assert (publisher.metadata / "2.root.json").is_file()


def test_rotating_the_root_key_signs_the_new_root_with_old_and_new(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path).init()
    old = load(publisher.metadata / "1.root.json")
    done = cli("rotate-key", str(publisher.dir), "--role", "root")
    assert done.returncode == 0, done.stderr
    new = load(publisher.metadata / "2.root.json")
    assert (publisher.metadata / "root.json").read_bytes() == (
        publisher.metadata / "2.root.json"
    ).read_bytes()
    old_root, new_root = old.signed, new.signed
    assert isinstance(old_root, Root) and isinstance(new_root, Root)
    # What a client checks: the old root's key signed it, and so did the new one.
    old_root.verify_delegate("root", new.signed_bytes, new.signatures)
    new_root.verify_delegate("root", new.signed_bytes, new.signatures)
    assert new_root.roles["root"].keyids != old_root.roles["root"].keyids
    (retired,) = (publisher.keys / "retired").iterdir()
    assert retired.name.startswith("root-") and f"{retired}" in done.stdout
    active = KeyStore(publisher.keys).load("root").public_key.keyid
    assert active == new_root.roles["root"].keyids[0]
    if os.name == "posix":
        assert mode(retired) == 0o600


def test_rotating_an_online_key_keeps_every_other_key(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path).init()
    publisher.add("1.0.0")
    before = load(publisher.metadata / "root.json").signed
    assert isinstance(before, Root)
    publisher.repo("rotate-key", str(publisher.dir), "--role", "targets")
    after = load(publisher.metadata / "root.json").signed
    assert isinstance(after, Root)
    assert after.roles["targets"].keyids != before.roles["targets"].keyids
    for role in ("root", "snapshot", "timestamp"):
        assert after.roles[role].keyids == before.roles[role].keyids
    targets = load(publisher.metadata / "3.targets.json")  # re-signed by the new key
    after.verify_delegate("targets", targets.signed_bytes, targets.signatures)


def test_verify_finds_a_repository_that_clients_would_refuse(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path).init()
    publisher.add("1.0.0")
    repository = FolderRepository(publisher.dir, KeyStore(publisher.keys))
    assert repository.verify() == []
    target = next((publisher.dir / "targets" / "1.0.0").iterdir())
    target.write_bytes(b"corrupted by the upload")
    (problem,) = repository.verify()
    assert "does not match its metadata" in problem
    data = json.loads((publisher.metadata / "timestamp.json").read_text())
    data["signed"]["version"] = 99
    (publisher.metadata / "timestamp.json").write_text(json.dumps(data))
    assert "does not verify" in repository.verify()[0]


def test_repository_commands_name_a_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="repo init"):
        FolderRepository(tmp_path / "none", KeyStore(tmp_path / "keys")).refresh()


def test_a_folder_holding_only_metadata_can_publish(tmp_path: Path) -> None:
    """The CI job's situation: earlier versions' targets are release assets, not files here."""
    publisher = Publisher(tmp_path).init()
    publisher.add("1.0.0")
    import shutil

    shutil.rmtree(publisher.dir / "targets")
    publisher.add("1.1.0")
    publisher.refresh()
    repository = FolderRepository(publisher.dir, KeyStore(publisher.keys))
    assert repository.verify() == []
    assert sorted(p.name for p in (publisher.dir / "targets").iterdir()) == ["1.1.0"]


def test_the_release_workflow_runs_commands_the_cli_knows() -> None:
    import re
    import shlex

    from trayupdater.cli_parser import build_parser

    workflow = (Path(__file__).parents[1] / "packaging" / "ci" / "release.yml").read_text()
    joined = workflow.replace("\\\n", " ")  # shell line continuations
    commands = re.findall(r"^\s*(trayupdater repo .*)$", joined, re.M)
    assert len(commands) >= 3, commands
    for command in commands:
        words = shlex.split(command.replace('"$GITHUB_REF_NAME"', "v1.2.3"))[1:]
        args = build_parser().parse_args(words)
        assert args.command == "repo" and args.repo_action in ("add", "refresh")
        assert args.keys is not None  # CI keys never sit beside the checkout's repository


def test_a_missing_key_stops_a_publish_before_anything_changes(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path).init()
    before = publisher.save()
    away = tmp_path / "timestamp.pem"
    (publisher.keys / "timestamp.pem").rename(away)
    done = cli("add", str(publisher.dir), "--version", "1.0.0", str(publisher.archive("1.0.0")))
    assert done.returncode == 1 and "no timestamp key" in done.stderr
    assert publisher.save() == before  # nothing written, nothing half-published
    away.rename(publisher.keys / "timestamp.pem")
    publisher.add("1.0.0")
    timestamp = load(publisher.metadata / "timestamp.json").signed
    assert isinstance(timestamp, Timestamp) and timestamp.version == 2


def test_adding_again_finishes_a_publish_that_stopped_half_way(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path).init()
    archive = publisher.archive("1.0.0")
    repository = publisher.library()
    infos = repository._copy_targets("1.0.0", [archive], check_folder("1.0.0"))
    with repository.edit_targets() as targets:  # the run stopped here: no snapshot yet
        for info in infos:
            targets.targets[info.path] = info
    publisher.add("1.0.0", files=[archive])
    snapshot = load(publisher.metadata / "2.snapshot.json").signed
    assert snapshot.meta["targets.json"].version == 2
    assert FolderRepository(publisher.dir, KeyStore(publisher.keys)).verify() == []
