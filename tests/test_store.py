from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest

from trayupdater.errors import StorageError
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


# --- hand-edited or damaged state.json fields ---------------------------------------------------

BAD_FIELDS = [
    ("active", "../../etc"),
    ("active", 5),
    ("active", ""),
    ("previous", "../x"),
    ("previous", ["1.0.0"]),
    ("latest_seen", ".hidden"),
    ("blocked", 5),
    ("recalled", "1.0.0"),
    ("etag", 5),
    ("last_error", {"x": 1}),
    ("skipped", 1.5),
    ("last_check", "x"),
    ("last_check", float("nan")),
    ("probation_until", "soon"),
    ("probation_until", True),
    ("probation_until", float("inf")),
    pytest.param("probation_until", 10**400, id="probation_until-huge-int"),
    ("probation_until", -5),
    ("paused_until", 1e300),
    ("paused", "yes"),
    ("child_pid", "123"),
    ("child_pid", 1.5),
    ("child_pid", True),
    ("child_pid", 0),
    ("child_pid", 2**63),
    ("child_port", 70000),
    ("child_port", "8080"),
]


@pytest.mark.parametrize(("name", "value"), BAD_FIELDS)
def test_a_state_field_of_the_wrong_type_is_not_set(
    name: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    good = {"active": "1.2.0", "previous": "1.1.0", "blocked": ["1.3.0"]}
    state = State.from_json({**good, name: value})
    expected = State.from_json(good)
    assert getattr(state, name) == getattr(State(), name)
    assert {k: getattr(state, k) for k in good if k != name} == {
        k: getattr(expected, k) for k in good if k != name
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"{name}=" in warnings[0]


def test_every_state_field_survives_a_round_trip(tmp_path: Path) -> None:
    """Each field has a type check: a valid value of any of them is kept."""
    state = State(
        active="1.2.0",
        previous="1.1.0",
        blocked=["1.3.0"],
        recalled=["1.3.0"],
        etag='W/"x"',
        last_check=1.7e9,
        last_error="offline",
        latest_seen="1.3.0",
        child_pid=4242,
        child_port=41000,
        probation_until=1.7e9 + 30,
        skipped="1.4.0",
        paused=True,
        paused_until=1.8e9,
    )
    assert set(asdict(state)) == set(State.__dataclass_fields__)
    assert all(v not in (None, False, []) for v in asdict(state).values())
    store = VersionStore(tmp_path)
    store.save_state(state)
    assert store.load_state() == state


def test_a_wrong_field_costs_only_that_field(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    store.state_path.write_text(json.dumps({"active": "1.2.0", "blocked": 5, "child_pid": "1"}))
    assert store.load_state() == State(active="1.2.0")
    assert not list(tmp_path.glob("state.corrupt-*"))  # not set aside as unreadable


@pytest.mark.parametrize("name", ["../../etc", "", ".", "..", "a/b", "a\\b", 5, None])
def test_get_answers_none_for_an_unsafe_version_name(tmp_path: Path, name: object) -> None:
    store = VersionStore(tmp_path)
    store.install("1.0.0", populate_with(), sha256="", asset="")
    assert store.get(name) is None  # type: ignore[arg-type]


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


# --- a state file that cannot be read ---------------------------------------------------------


def test_a_state_file_that_is_a_folder_is_set_aside(tmp_path: Path) -> None:
    """Was an IsADirectoryError traceback at start (only a missing file was handled)."""
    store = VersionStore(tmp_path)
    store.state_path.mkdir()
    (store.state_path / "inside").write_text("kept")
    assert store.load_state() == State()
    (copy,) = tmp_path.glob("state.corrupt-*")
    assert (copy / "inside").read_text() == "kept"
    store.save_state(State(active="1.0.0"))  # and the app can go on saving
    assert store.load_state() == State(active="1.0.0")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_a_state_file_that_cannot_be_read_is_set_aside(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    store.save_state(State(active="1.0.0"))
    store.state_path.chmod(0)
    assert store.load_state() == State()
    assert list(tmp_path.glob("state.corrupt-*"))


def test_two_damaged_state_files_in_one_second_are_two_copies(tmp_path: Path) -> None:
    """The copy was named by the second: the second damaged file overwrote the first copy."""
    store = VersionStore(tmp_path)
    for text in ("{first", "{second", "{third"):
        store.state_path.write_text(text)
        assert store.load_state() == State()
    copies = sorted(p.read_text() for p in tmp_path.glob("state.corrupt-*"))
    assert copies == ["{first", "{second", "{third"]


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS")
def test_a_huge_state_file_is_set_aside_without_reading_it_whole(tmp_path: Path) -> None:
    """A 4 GiB state.json (sparse: no disk used) was read whole: in a process limited to
    1 GiB of address space, a MemoryError at start."""
    state_path = VersionStore(tmp_path).state_path
    with state_path.open("wb") as file:
        file.truncate(4 * 1024**3)
    script = textwrap.dedent(
        """
        import resource, sys
        from trayupdater.store import State, VersionStore
        resource.setrlimit(resource.RLIMIT_AS, (1024**3, 1024**3))
        from pathlib import Path
        sys.exit(0 if VersionStore(Path(sys.argv[1])).load_state() == State() else 3)
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    (copy,) = tmp_path.glob("state.corrupt-*")
    assert copy.stat().st_size == 4 * 1024**3


def test_a_state_file_that_cannot_be_moved_aside_is_one_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data folder where nothing can be renamed (read-only, as root cannot be made here):
    one sentence naming the file, not a traceback."""
    store = VersionStore(tmp_path)
    store.state_path.write_text("{damaged")

    def refuse(self: Path, target: Path) -> Path:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "replace", refuse)
    with pytest.raises(StorageError) as caught:
        store.load_state()
    message = str(caught.value)
    assert "state.json" in message and "Permission denied" in message and "\n" not in message
