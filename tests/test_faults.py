"""Fault injection with real processes: kill -9 at each step of an update, a full disk.

After each fault: the old (or the new, whole) version serves, no corrupt file is ever
executed, state.json is valid, and the status says what happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Instance, alive, recorded_child_pid, wait_for
from test_pipeline import _pad_archive

from trayupdater.children import free_port
from trayupdater.demo import DEMO_REPO, child_archive, publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.store import VersionStore

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="POSIX only")]

# Log lines the app writes as an update goes through its steps, in order.
STEPS = [
    "installed 1.1.0 from",  # verified, extracted, committed to the store
    "started simple-server 1.1.0",  # new child up, before the health check passes
    "proxy switched to 1.1.0",  # traffic moved
    "updated 1.0.0 -> 1.1.0",  # state.json says 1.1.0
    "drained 1.0.0",  # old child about to stop
]


@pytest.fixture
def instance(feed: ReleaseFeed, tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(feed, tmp_path / "data", free_port())
    yield inst
    inst.kill()


def log_text(data: Path) -> str:
    try:
        return (data / "logs" / "trayupdater.log").read_text()
    except FileNotFoundError:
        return ""


def assert_consistent(data: Path) -> None:
    store = VersionStore(data)
    state = store.load_state()
    assert not list(data.glob("state.corrupt-*")), "state.json was corrupt"
    for version in store.installed():
        installed = store.get(version)
        assert installed is not None
        expected = child_archive(version)[0]
        assert installed.asset == expected
    if state.active:
        assert store.get(state.active) is not None, "active version is not a whole install"


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_update_step(feed: ReleaseFeed, instance: Instance, step: str) -> None:
    publish_version(feed, "1.0.0")
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.0.0", what="serving 1.0.0")
    old_child = recorded_child_pid(instance.data)
    publish_version(feed, "1.1.0")
    before = log_text(instance.data).count(step)
    trigger = subprocess.Popen(
        [sys.executable, "-m", "trayupdater", *instance.args, "check"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=instance.env,
    )
    wait_for(lambda: log_text(instance.data).count(step) > before, timeout=30, what=step)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    trigger.wait(timeout=30)
    # No child may outlive the killed app: it would hold a port and never be stopped.
    for pid in (old_child, VersionStore(instance.data).load_state().child_pid):
        if pid:
            wait_for(lambda pid=pid: not alive(pid), timeout=10, what=f"child {pid} gone")
    assert_consistent(instance.data)

    started = time.monotonic()
    proc = instance.start()
    wait_for(lambda: instance.version() in ("1.0.0", "1.1.0"), timeout=20, what="serving again")
    restart_seconds = time.monotonic() - started
    assert restart_seconds < 15
    # The restarted app finishes the job: the update was not lost.
    wait_for(lambda: instance.version() == "1.1.0", timeout=30, what="1.1.0 after restart")
    assert_consistent(instance.data)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_sigkill_mid_download_resumes(feed: ReleaseFeed, instance: Instance) -> None:
    publish_version(feed, "1.0.0")
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.0.0", what="serving 1.0.0")
    name, blob = child_archive("1.1.0")
    feed.publish(DEMO_REPO, "v1.1.0", {name: _pad_archive(blob)})
    feed.download_delay = 0.05
    subprocess.Popen(
        [sys.executable, "-m", "trayupdater", *instance.args, "check"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=instance.env,
    )
    downloads = instance.data / "downloads"

    def half_downloaded() -> bool:
        with contextlib.suppress(FileNotFoundError):  # renamed once complete
            return any(p.stat().st_size > 300_000 for p in downloads.glob(f"{name}.*.part"))
        return False

    wait_for(half_downloaded, what="half a download")
    proc.kill()
    proc.wait()
    assert_consistent(instance.data)
    assert VersionStore(instance.data).installed() == ["1.0.0"]
    feed.download_delay = 0
    ranges = feed.stats.range_requests
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.1.0", timeout=30, what="1.1.0 after resume")
    assert feed.stats.range_requests > ranges  # resumed, not started over
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_an_update_too_big_for_the_disk_is_refused_before_a_byte_is_written(
    feed: ReleaseFeed, small_disk: Path, tmp_path: Path
) -> None:
    """It was downloaded until the disk was full: meanwhile the running child, and every
    other program on the machine, met a full disk."""
    with _serving_1_0_0(feed, small_disk / "data") as inst:
        name, blob = child_archive("1.2.0")
        # 2 MB of incompressible padding twice does not fit in what is left of 3 MB.
        feed.publish(DEMO_REPO, "v1.2.0", {name: _pad_archive(_pad_archive(blob))})
        downloads = feed.stats.downloads
        result = inst.cli("check")
        assert result.returncode == 1
        said = result.stdout + result.stderr
        assert "cannot store" in said and "it needs about" in said and "MB are" in said, said
        assert feed.stats.downloads == downloads  # not a byte fetched
        assert inst.version() == "1.0.0"
        assert "cannot store" in inst.cli("status").stdout
        assert_consistent(inst.data)


def test_disk_full_while_unpacking_keeps_the_old_version_serving(
    feed: ReleaseFeed, small_disk: Path, tmp_path: Path
) -> None:
    """An archive that unpacks far larger than programs do passes the check before the
    download, then fills the disk: the space is given back and the old version serves."""
    with _serving_1_0_0(feed, small_disk / "data") as inst:
        name, blob = child_archive("1.2.0")
        feed.publish(DEMO_REPO, "v1.2.0", {name: _pad_archive(blob, bytes(5_000_000))})
        result = inst.cli("check")
        assert result.returncode == 1
        assert "No space left" in result.stdout + result.stderr
        assert inst.version() == "1.0.0"
        assert_consistent(inst.data)
        assert not list((inst.data / "downloads").iterdir())  # the space is given back
        assert not list((inst.data / "versions").glob("*tmp*"))


@contextlib.contextmanager
def _serving_1_0_0(feed: ReleaseFeed, data: Path) -> Iterator[Instance]:
    """A headless app in ``data`` serving 1.0.0; stopped with SIGTERM (exit 0) after."""
    inst = Instance(feed, data, free_port())
    try:
        publish_version(feed, "1.0.0")
        proc = inst.start()
        wait_for(lambda: inst.version() == "1.0.0", what="serving 1.0.0")
        yield inst
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        inst.kill()


def test_probation_survives_a_restart(feed: ReleaseFeed, instance: Instance) -> None:
    """Killed right after switching to a new version: the restarted app still holds the new
    version to its probation, and rolls back when it crashes within it."""
    instance.env["TRAYUPDATER_PROBATION_SECONDS"] = "8"
    publish_version(feed, "1.0.0")
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.0.0", what="serving 1.0.0")
    publish_version(feed, "1.1.0", behaviour={"CRASH_AFTER_SECONDS": 3})
    assert instance.cli("check").returncode == 0
    assert instance.version() == "1.1.0"
    proc.kill()
    proc.wait()
    assert VersionStore(instance.data).load_state().probation_until is not None
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.0.0", timeout=30, what="automatic rollback")
    # The proxy moves first, state.json follows a moment later.
    wait_for(
        lambda: "1.1.0" in VersionStore(instance.data).load_state().blocked, what="1.1.0 blocked"
    )
    state = VersionStore(instance.data).load_state()
    assert state.active == "1.0.0" and state.probation_until is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def _immutable(folder: Path, on: bool) -> bool:
    """chattr +i: nothing can be created in ``folder``, not even by root (chmod cannot do
    that for root, and a read-only remount is refused while the app holds files open)."""
    flag = "+i" if on else "-i"
    try:
        return subprocess.run(["chattr", flag, str(folder)], capture_output=True).returncode == 0
    except OSError:
        return False


def test_data_folder_turning_unwritable_is_a_clear_error_and_serving_goes_on(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """A running app whose data folder can no longer be written says so in one sentence
    naming the folder, and keeps serving; before, `check` reported "[Errno 30]" through the
    internal-error path."""
    inst = Instance(feed, tmp_path / "data", free_port())
    locked = [inst.data, inst.data / "downloads"]
    try:
        publish_version(feed, "1.0.0")
        inst.start()
        wait_for(lambda: inst.version() == "1.0.0", what="serving 1.0.0")
        if not all(_immutable(folder, True) for folder in locked):
            pytest.skip("chattr +i is not available here")
        publish_version(feed, "1.1.0")
        result = inst.cli("check")
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "Internal error" not in output and "Errno" not in output
        assert "Operation not permitted" in output and str(inst.data) in output
        assert inst.version() == "1.0.0"
        status = inst.cli("status")
        assert "cannot" in status.stdout and str(inst.data) in status.stdout
    finally:
        for folder in locked:
            _immutable(folder, False)
        inst.kill()
