"""The publisher signs only what it signed before: ``repo`` commands start from the folder as
python-tuf's client verifies it from ``1.root.json``, with the publisher's keys as the only
keys of their roles, and write only inside the folder. Each attack is staged on a repository
made by the real CLI, by someone who can write the folder but holds no key."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from static_server import StaticServer
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer
from tuf_support import Publisher, tuf_source

from trayupdater.cli import main
from trayupdater.tuf_verify import verify_folder

EVIL = b"#!/bin/sh\necho pwned\n"


@pytest.fixture
def publisher(tmp_path: Path) -> Publisher:
    publisher = Publisher(tmp_path).init()
    publisher.add("1.0.0")
    return publisher


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``trayupdater repo …`` in this process: exit code and stderr."""
    capsys.readouterr()
    code = main(["repo", *args])
    return code, capsys.readouterr().err


def write(md: Metadata, path: Path) -> None:
    path.write_bytes(md.to_bytes(JSONSerializer(compact=False)))


def evil_target() -> TargetFile:
    info = TargetFile(len(EVIL), {"sha256": hashlib.sha256(EVIL).hexdigest()}, "9.9.9/app.tar.gz")
    info.unrecognized_fields["custom"] = {
        "trayupdater": {"version": "9.9.9", "published": "2025-01-01T00:00:00Z"}
    }
    return info


def offered(publisher: Publisher, tmp_path: Path) -> list[str]:
    """The versions a client anchored at the shipped root is offered."""
    with StaticServer(publisher.dir, tmp_path / "server") as server:
        source = tuf_source(server.url, publisher, tmp_path / "cache")
        return [r.version_text for r in source.check().releases]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


COMMANDS = {
    "add": ["add", "{dir}", "--version", "1.1.0", "{file}"],
    "refresh": ["refresh", "{dir}"],
    "rollout": ["rollout", "{dir}", "--version", "1.0.0", "--percent", "50"],
    "recall": ["recall", "{dir}", "--version", "1.0.0"],
    "rotate targets key": ["rotate-key", "{dir}", "--role", "targets"],
    "rotate root key": ["rotate-key", "{dir}", "--role", "root"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_targets_edited_without_the_key_are_never_signed(
    publisher: Publisher, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """A target slipped into N.targets.json in place: every command refuses before it
    changes anything (rotate-key makes no key either), instead of signing it."""
    newest = publisher.metadata / "2.targets.json"
    doc = json.loads(newest.read_text())
    info = evil_target()
    doc["signed"]["targets"][info.path] = info.to_dict()
    newest.write_text(json.dumps(doc, indent=1))
    upload = publisher.archive("1.1.0")
    before, keys_before = files(publisher.dir), files(publisher.keys)
    args = [a.format(dir=publisher.dir, file=upload) for a in COMMANDS[command]]
    code, err = run(capsys, *args)
    assert code == 1
    assert "does not verify as a client checks it" in err
    assert "so nothing was signed" in err
    assert files(publisher.dir) == before
    assert files(publisher.keys) == keys_before


def test_a_newer_targets_file_dropped_into_the_folder_is_not_built_on(
    publisher: Publisher, tmp_path: Path
) -> None:
    """3.targets.json that no signed snapshot names used to be taken for the newest targets
    and signed as version 4; now the next publish builds on the verified version 2."""
    doc = json.loads((publisher.metadata / "2.targets.json").read_text())
    info = evil_target()
    doc["signed"]["targets"][info.path] = info.to_dict()
    doc["signed"]["version"] = 3
    (publisher.metadata / "3.targets.json").write_text(json.dumps(doc))
    publisher.add("1.1.0")
    targets = Metadata.from_file(str(publisher.metadata / "3.targets.json")).signed
    assert isinstance(targets, Targets)
    assert sorted(targets.targets) == sorted(
        f"{v}/{publisher.archive(v).name}" for v in ("1.0.0", "1.1.0")
    )
    assert offered(publisher, tmp_path) == ["1.1.0", "1.0.0"]


def test_a_root_trusting_a_second_key_for_a_role_is_refused(
    publisher: Publisher, capsys: pytest.CaptureFixture[str]
) -> None:
    """1.root.json replaced by one listing a stranger's targets key beside the publisher's
    (and the stranger's root key): the folder verifies from it, targets signed by the
    stranger included, so verification alone would have let the publisher sign them."""
    stranger_root, stranger_targets = (
        CryptoSigner.generate_ed25519(),
        CryptoSigner.generate_ed25519(),
    )
    root_md = _root_taken_over(publisher.metadata / "1.root.json", stranger_root)
    assert isinstance(root_md.signed, Root)
    root_md.signed.add_key(stranger_targets.public_key, "targets")
    root_md.signatures.clear()
    root_md.sign(stranger_root)
    write(root_md, publisher.metadata / "1.root.json")
    write(root_md, publisher.metadata / "root.json")
    targets_md = Metadata.from_file(str(publisher.metadata / "2.targets.json"))
    assert isinstance(targets_md.signed, Targets)
    targets_md.signed.targets["9.9.9/app.tar.gz"] = evil_target()
    targets_md.signatures.clear()
    targets_md.sign(stranger_targets)
    write(targets_md, publisher.metadata / "2.targets.json")
    assert verify_folder(publisher.dir, []) == []  # it does verify, from its own root
    before = files(publisher.dir)
    code, err = run(
        capsys, "add", str(publisher.dir), "--version", "1.1.0", str(publisher.archive("1.1.0"))
    )
    assert code == 1
    assert "the signed root trusts 2 keys for the targets role where trayupdater uses one" in err
    assert files(publisher.dir) == before


def _root_taken_over(path: Path, stranger: CryptoSigner) -> Metadata:
    """The root at ``path`` with its root key swapped for ``stranger``'s, self-signed."""
    root_md = Metadata.from_file(str(path))
    root = root_md.signed
    assert isinstance(root, Root)
    (ours,) = root.roles["root"].keyids
    root.add_key(stranger.public_key, "root")
    root.revoke_key(ours, "root")
    root_md.signatures.clear()
    root_md.sign(stranger)
    return root_md


def test_a_root_json_that_is_not_the_newest_signed_root_is_refused(
    publisher: Publisher, capsys: pytest.CaptureFixture[str]
) -> None:
    """metadata/root.json is what new builds ship: one whose root key was swapped (self-signed
    by a stranger, online keys kept) must not pass a routine publish unnoticed."""
    stranger = CryptoSigner.generate_ed25519()
    root_md = _root_taken_over(publisher.metadata / "root.json", stranger)
    write(root_md, publisher.metadata / "root.json")
    code, err = run(
        capsys, "add", str(publisher.dir), "--version", "1.1.0", str(publisher.archive("1.1.0"))
    )
    assert code == 1
    assert "root.json is not the newest signed root (1.root.json)" in err
    assert not (publisher.metadata / "3.targets.json").exists()


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets", "root"])
def test_expired_metadata_can_still_be_refreshed(publisher: Publisher, role: str) -> None:
    """The check before a change sets expiry aside: renewing it is what refresh is for."""
    publisher.resign_expired(role)
    assert any("expired" in problem for problem in publisher.library().verify())
    publisher.refresh()
    assert publisher.library().verify() == []


def test_init_refuses_a_folder_that_already_holds_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without root.json, but with a targets file planted: init would have signed it."""
    publisher = Publisher(tmp_path)
    publisher.metadata.mkdir(parents=True)
    planted = publisher.metadata / "5.targets.json"
    planted.write_text("{}")
    code, err = run(capsys, "init", str(publisher.dir))
    assert code == 1 and "already holds metadata files but no root.json" in err
    assert [p.name for p in publisher.metadata.iterdir()] == ["5.targets.json"]


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")
@pytest.mark.parametrize("link", ["targets/2.0.0", "targets"])
def test_a_linked_targets_folder_is_refused(
    publisher: Publisher, tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str
) -> None:
    """A link in place of a version folder (or of targets/) would have the publisher
    overwrite files outside the repository, and leave the upload without them."""
    outside = tmp_path / "outside"
    if link == "targets":
        shutil.copytree(publisher.dir / "targets", outside)
        shutil.rmtree(publisher.dir / "targets")
        precious = outside / "2.0.0"
    else:
        precious = outside
    precious.mkdir(parents=True)
    upload = publisher.archive("2.0.0")
    (precious / upload.name).write_bytes(b"precious")
    os.symlink(outside, publisher.dir / link)
    code, err = run(capsys, "add", str(publisher.dir), "--version", "2.0.0", str(upload))
    assert code == 1
    assert f"{publisher.dir / link} is a symbolic link" in err
    assert (precious / upload.name).read_bytes() == b"precious"
    assert not (publisher.metadata / "3.targets.json").exists()
