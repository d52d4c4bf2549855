"""The publisher never builds on an older copy of its repository folder, nor writes through a
linked ``metadata/`` or ``targets/``. Someone who can write the folder but holds no key (a
sync job restoring an old copy, a stale checkout, the file server) puts back an earlier,
validly signed state: signed on top of, it would give clients timestamp, snapshot and
targets versions below the ones they trust, which they refuse as a rollback, and the fleet
would stop updating. The keys' folder remembers what they signed for each repository
(:mod:`trayupdater.tuf_signed_versions`). Real folders, keys, CLI, server and client."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from static_server import StaticServer
from tuf_support import Publisher, tuf_source

from trayupdater.cli import main
from trayupdater.tuf_signed_versions import MAX_RECORD_BYTES, RECORD_NAME
from trayupdater.tuf_verify import verify_folder

COMMANDS = {
    "add": ["add", "{dir}", "--version", "1.2.0", "{file}"],
    "refresh": ["refresh", "{dir}"],
    "recall": ["recall", "{dir}", "--version", "1.0.0"],
}
PUT_BACK = "an older copy of the folder was put back; restore the newest copy before publishing"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``trayupdater repo …`` in this process: exit code and stderr."""
    capsys.readouterr()
    code = main(["repo", *args])
    return code, capsys.readouterr().err


def command(publisher: Publisher, name: str, *extra: str) -> list[str]:
    upload = publisher.archive("1.2.0")
    return [a.format(dir=publisher.dir, file=upload) for a in COMMANDS[name]] + list(extra)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def keep(publisher: Publisher, where: Path) -> Path:
    """A copy of the repository folder as it is now (a backup, a sync job's snapshot)."""
    shutil.copytree(publisher.dir, where)
    return where


def put_back(copy: Path, publisher: Publisher) -> None:
    """The folder's ``metadata/`` and ``targets/`` replaced by those of ``copy``."""
    for name in ("metadata", "targets"):
        shutil.rmtree(publisher.dir / name)
        shutil.copytree(copy / name, publisher.dir / name)


def record(keys: Path) -> list[dict[str, int]]:
    """The versions remembered in ``keys``, one dict per repository."""
    return list(json.loads((keys / RECORD_NAME).read_text())["repositories"].values())


def offered(publisher: Publisher, url: str, cache: Path) -> dict[str, bool]:
    """Version -> recalled, as a client anchored at the shipped root sees them."""
    releases = tuf_source(url, publisher, cache).check().releases
    return {r.version_text: r.recalled for r in releases}


@pytest.mark.parametrize("name", COMMANDS)
def test_an_older_copy_put_back_is_refused_and_clients_keep_updating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    publisher = Publisher(tmp_path).init()
    publisher.add("1.0.0")
    older = keep(publisher, tmp_path / "older")  # timestamp v2
    publisher.add("1.1.0")  # timestamp v3
    with StaticServer(publisher.dir, tmp_path / "server") as server:
        cache = tmp_path / "cache"
        assert offered(publisher, server.url, cache) == {"1.1.0": False, "1.0.0": False}
        newest = keep(publisher, tmp_path / "newest")
        put_back(older, publisher)
        before, keys_before = files(publisher.dir), files(publisher.keys)
        code, err = run(capsys, *command(publisher, name))
        assert code == 1
        assert "holds timestamp version 2, but these keys signed version 3 of it" in err
        assert PUT_BACK in err and "Traceback" not in err
        assert files(publisher.dir) == before  # byte for byte: nothing signed, nothing copied
        assert files(publisher.keys) == keys_before

        put_back(newest, publisher)
        code, err = run(capsys, *command(publisher, name))
        assert code == 0, err
        # The client that saw 1.1.0 (timestamp v3) takes what was signed on top of it.
        expected = {
            "add": {"1.2.0": False, "1.1.0": False, "1.0.0": False},
            "refresh": {"1.1.0": False, "1.0.0": False},
            "recall": {"1.1.0": False, "1.0.0": True},
        }[name]
        assert offered(publisher, server.url, cache) == expected


def test_a_recall_is_not_undone_by_an_older_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The copy from before the recall, refreshed, would have offered 1.1.0 again."""
    publisher = Publisher(tmp_path).init()
    publisher.add("1.0.0")
    publisher.add("1.1.0")
    before_recall = keep(publisher, tmp_path / "before-recall")
    publisher.repo("recall", str(publisher.dir), "--version", "1.1.0")
    put_back(before_recall, publisher)
    before = files(publisher.dir)
    code, err = run(capsys, "refresh", str(publisher.dir))
    assert code == 1 and "holds timestamp version 3, but these keys signed version 4" in err
    assert files(publisher.dir) == before


def test_the_record_is_kept_per_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two repositories signed with the same keys: each is held to its own versions."""
    first = Publisher(tmp_path / "a").init()
    first.add("1.0.0")
    first.add("1.1.0")  # timestamp v3
    second = Publisher(tmp_path / "b")
    second.keys = first.keys
    # Its own root (signed a day apart: a root made the same second with the same keys
    # would be the same repository, to clients too).
    second.library(days_ago=1).initialise()
    keys = ["--keys", str(first.keys)]
    code, err = run(capsys, *command(second, "add", *keys))  # timestamp v2 < 3: its own
    assert code == 0, err
    assert sorted(r["timestamp"] for r in record(first.keys)) == [2, 3]
    older = keep(second, tmp_path / "older")
    code, err = run(capsys, "refresh", str(second.dir), *keys)  # timestamp v3
    assert code == 0, err
    put_back(older, second)
    code, err = run(capsys, "refresh", str(second.dir), *keys)
    assert code == 1 and "holds timestamp version 2, but these keys signed version 3" in err
    first.refresh()  # the first repository is not held to the second's record
    assert sorted(r["timestamp"] for r in record(first.keys)) == [3, 4]


BAD_RECORDS = {
    "not JSON": b"{not json",
    "not an object": b"[]",
    "no repositories": b'{"about": "x"}',
    "not a SHA-256": b'{"repositories": {"abc": {"timestamp": 3}}}',
    "a version as text": b'{"repositories": {"' + b"a" * 64 + b'": {"timestamp": "3"}}}',
    "a version of 0": b'{"repositories": {"' + b"a" * 64 + b'": {"timestamp": 0}}}',
    "an unknown role": b'{"repositories": {"' + b"a" * 64 + b'": {"nightly": 3}}}',
    "too large": b'{"repositories": {}}' + b" " * MAX_RECORD_BYTES,
}


@pytest.mark.parametrize("damage", BAD_RECORDS)
def test_a_damaged_record_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    publisher = Publisher(tmp_path).init()
    (publisher.keys / RECORD_NAME).write_bytes(BAD_RECORDS[damage])
    before, keys_before = files(publisher.dir), files(publisher.keys)
    code, err = run(capsys, *command(publisher, "add"))
    assert code == 1
    assert f"{publisher.keys / RECORD_NAME} is not a record of the versions these keys" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert files(publisher.dir) == before
    assert files(publisher.keys) == keys_before


def test_a_missing_record_is_made_by_the_next_publish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """First use of these keys here (a new machine, keys from a backup): no check, and the
    record starts from what is signed; from then on an older copy is refused."""
    publisher = Publisher(tmp_path).init()
    publisher.add("1.0.0")
    older = keep(publisher, tmp_path / "older")
    (publisher.keys / RECORD_NAME).unlink()
    publisher.add("1.1.0")
    (versions,) = record(publisher.keys)
    assert versions == {"root": 1, "timestamp": 3, "snapshot": 3, "targets": 3}
    if os.name == "posix":
        assert stat.S_IMODE((publisher.keys / RECORD_NAME).stat().st_mode) == 0o600
    assert [p.name for p in publisher.keys.glob(".signed-*")] == []  # no temporary left
    put_back(older, publisher)
    code, err = run(capsys, "refresh", str(publisher.dir))
    assert code == 1 and PUT_BACK in err


def test_a_record_that_cannot_be_written_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What was signed stands: the record lags, it never undoes a publish."""
    publisher = Publisher(tmp_path)
    (publisher.keys / RECORD_NAME).mkdir(parents=True)  # where the record file would go
    capsys.readouterr()
    assert main(["repo", "init", str(publisher.dir)]) == 0
    err = capsys.readouterr().err
    assert f"warning: cannot read {publisher.keys / RECORD_NAME}: Is a directory" in err
    assert "the versions just signed are not remembered" in err
    assert verify_folder(publisher.dir, []) == []  # published all the same
    assert [p.name for p in publisher.keys.glob(".signed-*")] == []


def test_a_publish_that_stopped_before_its_timestamp_is_not_remembered(tmp_path: Path) -> None:
    """Only what clients can see is recorded: targets and snapshot written without the
    timestamp that leads to them are done again under the same numbers, not refused."""
    publisher = Publisher(tmp_path).init()
    repository = publisher.library()
    with repository.edit_targets():
        pass
    repository.do_snapshot()  # the run stopped here: 2.targets.json, 2.snapshot.json
    publisher.add("1.0.0")
    (versions,) = record(publisher.keys)
    assert versions == {"root": 1, "timestamp": 2, "snapshot": 2, "targets": 2}


symlinks = pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")


@symlinks
@pytest.mark.parametrize(
    ("link", "name"),
    [("metadata", "add"), ("metadata", "refresh"), ("targets", "refresh"), ("targets", "recall")],
)
def test_a_linked_metadata_or_targets_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str, name: str
) -> None:
    """The link would have the publisher write outside the repository (and the upload go
    without what it wrote)."""
    publisher = Publisher(tmp_path).init()
    publisher.add("1.0.0")
    publisher.add("1.1.0")
    outside = tmp_path / "outside"
    shutil.move(publisher.dir / link, outside)
    os.symlink(outside, publisher.dir / link)
    before, outside_before = files(publisher.dir), files(outside)
    code, err = run(capsys, *command(publisher, name))
    assert code == 1
    assert f"{publisher.dir / link} is a symbolic link and the publisher writes only" in err
    assert files(outside) == outside_before
    assert files(publisher.dir) == before


@symlinks
def test_init_refuses_a_linked_metadata_folder_before_making_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publisher = Publisher(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    publisher.dir.mkdir(parents=True)
    os.symlink(outside, publisher.metadata)
    code, err = run(capsys, "init", str(publisher.dir))
    assert code == 1 and f"{publisher.metadata} is a symbolic link" in err
    assert list(outside.iterdir()) == []
    assert not publisher.keys.exists()
