"""`trayupdater run --headless` as a real process: signals, CLI commands, kill -9 recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from trayupdater.children import free_port
from trayupdater.demo import DEMO_REPO, child_archive, publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.store import VersionStore

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


class Instance:
    def __init__(self, feed: ReleaseFeed, data: Path, port: int) -> None:
        self.data = data
        self.port = port
        config = data.parent / "none.toml"
        config.write_text("")
        self.args = [
            "--api-url",
            feed.url,
            "--repo",
            DEMO_REPO,
            "--data-dir",
            str(data),
            "--port",
            str(port),
            "--config",
            str(config),
        ]
        self.env = {
            **os.environ,
            "TRAYUPDATER_PROBATION_SECONDS": "1",
            "TRAYUPDATER_CHECK_INTERVAL": "3600",
        }
        self.proc: subprocess.Popen[str] | None = None

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trayupdater", *self.args, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def start(self) -> subprocess.Popen[str]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trayupdater", *self.args, "run", "--headless"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        return self.proc

    def version(self) -> str | None:
        import http.client

        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/version")
            response = conn.getresponse()
            body = response.read().decode()
            return body if response.status == 200 else None
        except OSError:
            return None


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def instance(feed: ReleaseFeed, tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(feed, tmp_path / "data", free_port())
    yield inst
    if inst.proc and inst.proc.poll() is None:
        inst.proc.kill()
        inst.proc.wait()


def test_sigterm_stops_cleanly(feed: ReleaseFeed, instance: Instance) -> None:
    publish_version(feed, "1.0.0")
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.0.0", what="serving 1.0.0")
    child_pid = VersionStore(instance.data).load_state().child_pid
    assert child_pid and alive(child_pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not alive(child_pid)
    state = VersionStore(instance.data).load_state()
    assert state.active == "1.0.0" and state.child_pid is None


def test_cli_talks_to_the_running_app(feed: ReleaseFeed, instance: Instance) -> None:
    publish_version(feed, "1.0.0")
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.0.0", what="serving 1.0.0")
    status = json.loads(instance.cli("status", "--json").stdout)
    assert status["active"] == "1.0.0" and status["phase"] == "running"

    publish_version(feed, "1.1.0")
    result = instance.cli("check")
    assert result.returncode == 0, result.stderr
    assert "Updated to 1.1.0" in result.stdout
    assert instance.version() == "1.1.0"

    second = instance.cli("run", "--headless", timeout=30)
    assert second.returncode == 0
    assert "already running" in second.stderr

    time.sleep(1.5)  # probation over
    result = instance.cli("rollback")
    assert result.returncode == 0 and "Rolled back to 1.0.0" in result.stdout
    assert instance.version() == "1.0.0"
    assert instance.cli("quit").returncode == 0
    assert proc.wait(timeout=30) == 0
    assert instance.cli("status").returncode == 3  # not running


def test_sigkill_mid_update_restarts_consistent(feed: ReleaseFeed, instance: Instance) -> None:
    """Kill the app at several points of an update; each restart serves a whole version."""
    publish_version(feed, "1.0.0")
    name, blob = child_archive("1.1.0")
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.0.0", what="serving 1.0.0")
    # A slow download gives the kills something to interrupt.
    from test_pipeline import _pad_archive

    feed.publish(DEMO_REPO, "v1.1.0", {name: _pad_archive(blob)})
    feed.download_delay = 0.02
    for delay in (0.2, 0.6, 1.2):
        child_pid = VersionStore(instance.data).load_state().child_pid
        trigger = subprocess.Popen(
            [sys.executable, "-m", "trayupdater", *instance.args, "check"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=instance.env,
        )
        time.sleep(delay)
        proc.kill()
        proc.wait()
        trigger.wait(timeout=30)
        # The child must not outlive its app (it would hold the backend port forever).
        if child_pid:
            wait_for(lambda pid=child_pid: not alive(pid), timeout=10, what="orphan child gone")
        store = VersionStore(instance.data)
        state = store.load_state()  # valid JSON
        assert state.active in ("1.0.0", "1.1.0")
        proc = instance.start()
        wait_for(
            lambda: instance.version() in ("1.0.0", "1.1.0"),
            timeout=20,
            what="serving again after kill -9",
        )
        for version in store.installed():
            assert store.get(version) is not None
    feed.download_delay = 0
    wait_for(lambda: instance.version() == "1.1.0", timeout=60, what="update completed")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
