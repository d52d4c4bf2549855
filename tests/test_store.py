from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trayupdater.store import MANIFEST, State, VersionStore


def populate_with(content: bytes = b"#!/bin/sh\necho hi\n"):
    def populate(folder: Path) -> Path:
        (folder / "files").mkdir()
        exe = folder / "files" / "server"
        exe.write_bytes(content)
        exe.chmod(0o755)
        return exe

    return populate


def test_install_commits_a_complete_version(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    installed = store.install("1.2.0", populate_with(), sha256="ab" * 32, asset="a.tar.gz")
    assert installed.executable == (tmp_path / "versions/1.2.0/files/server").resolve()
    assert store.installed() == ["1.2.0"]
    manifest = json.loads((tmp_path / "versions/1.2.0" / MANIFEST).read_text())
    assert manifest["executable"] == "files/server" and manifest["asset"] == "a.tar.gz"


def test_failed_populate_leaves_nothing(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)

    def broken(folder: Path) -> Path:
        (folder / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.install("1.3.0", broken, sha256="", asset="")
    assert store.installed() == []
    assert list((tmp_path / "versions").iterdir()) == []


def test_versions_sort_semantically_and_prune_protects(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    for v in ["1.10.0", "1.9.0", "1.2.0", "2.0.0rc1"]:
        store.install(v, populate_with(), sha256="", asset="")
    assert store.installed() == ["1.2.0", "1.9.0", "1.10.0", "2.0.0rc1"]
    removed = store.prune(keep=2, protect={"1.2.0"})
    assert removed == ["1.9.0", "1.10.0"]
    assert store.installed() == ["1.2.0", "2.0.0rc1"]


def test_manifest_cannot_point_outside(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    store.install("1.0.0", populate_with(), sha256="", asset="")
    manifest = tmp_path / "versions/1.0.0" / MANIFEST
    data = json.loads(manifest.read_text())
    data["executable"] = "../../../bin/sh"
    manifest.write_text(json.dumps(data))
    assert store.get("1.0.0") is None


def test_unsafe_version_names_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        VersionStore(tmp_path).folder("../evil")


def test_state_roundtrip_and_corrupt_file(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    assert store.load_state() == State()
    state = State(active="1.2.0", previous="1.1.0", blocked=["1.3.0"], etag='"x"')
    store.save_state(state)
    assert store.load_state() == state
    store.state_path.write_text("{truncated")
    assert store.load_state() == State()  # unreadable state is set aside, not fatal
    assert list(tmp_path.glob("state.corrupt-*"))


def test_clean_temporary_removes_interrupted_installs(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    store.install("1.0.0", populate_with(), sha256="", asset="")
    (tmp_path / "versions/1.1.0.tmp-abc").mkdir()
    (tmp_path / "versions/1.1.0.tmp-abc/files").mkdir()
    (tmp_path / "versions/1.2.0").mkdir()  # no manifest: never completed
    (tmp_path / "versions/1.0.0.trash-1").mkdir()
    (tmp_path / "versions/1.0.0.trash-1" / MANIFEST).write_text("{}")
    store.clean_temporary()
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == ["1.0.0"]
    assert store.installed() == ["1.0.0"]


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_sigkill_during_install_leaves_old_or_whole(tmp_path: Path) -> None:
    """Kill a real process at many points of install; the store is always consistent."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from trayupdater.store import VersionStore, State
        store = VersionStore(Path(sys.argv[1]))
        def populate(folder):
            (folder / "files").mkdir()
            for i in range(200):
                (folder / "files" / f"f{{i}}").write_bytes(b"x" * 4096)
            exe = folder / "files" / "server"
            exe.write_bytes(b"ok")
            return exe
        for n in range(1000):
            store.install(f"1.0.{{n}}", populate, sha256="", asset="")
            store.save_state(State(active=f"1.0.{{n}}"))
        """
    )
    for delay in (0.15, 0.3, 0.45):
        data = tmp_path / f"d{delay}"
        proc = subprocess.Popen([sys.executable, "-c", script, str(data)])
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        store = VersionStore(data)
        state = store.load_state()  # valid JSON, never half-written
        store.clean_temporary()
        for version in store.installed():
            got = store.get(version)
            assert got is not None and got.executable.read_bytes() == b"ok"
            assert len(list((got.folder / "files").iterdir())) == 201
        if state.active:
            assert state.active in store.installed()
