"""`trayupdater run --headless` as a real process: signals, CLI commands, kill -9 recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Instance, alive, recorded_child_pid, wait_for

from trayupdater.children import free_port
from trayupdater.demo import DEMO_REPO, child_archive, publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.store import VersionStore

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


@pytest.fixture
def instance(feed: ReleaseFeed, tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(feed, tmp_path / "data", free_port())
    yield inst
    inst.kill()


def test_sigterm_stops_cleanly(feed: ReleaseFeed, instance: Instance) -> None:
    publish_version(feed, "1.0.0")
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.0.0", what="serving 1.0.0")
    child_pid = recorded_child_pid(instance.data)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not alive(child_pid)
    state = VersionStore(instance.data).load_state()
    assert state.active == "1.0.0" and state.child_pid is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads in /proc (Linux)")
def test_sigterm_taken_by_another_thread_still_stops_it(
    feed: ReleaseFeed, instance: Instance
) -> None:
    # The kernel may hand a process's signal to any thread (one whose main thread has a
    # signal pending already, say). Python runs the handler in the main thread only when
    # that thread wakes: one asleep in Event.wait() for ever slept through it, and the app
    # never stopped. kill() on a thread's id makes the kernel try that thread first.
    publish_version(feed, "1.0.0")
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.0.0", what="serving 1.0.0")
    child_pid = recorded_child_pid(instance.data)
    others = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
    os.kill(others[-1], signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not alive(child_pid)


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


def test_two_launches_at_the_same_moment_leave_one_running(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """Start at login and a double-click at once, on one data folder (different ports, so
    the proxy's port cannot settle it): exactly one runs; the other talks to it and exits.
    Before the instance lock both heard no one on the control port and both ran."""
    publish_version(feed, "1.0.0")
    for attempt in range(3):  # the race was lost most times; three make it sure
        _launch_two_at_once(feed, tmp_path / f"data{attempt}")


def _launch_two_at_once(feed: ReleaseFeed, data: Path) -> None:
    launches = [Instance(feed, data, free_port()) for _ in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "trayupdater", *inst.args, "run", "--headless"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=inst.env,
        )
        for inst in launches
    ]
    try:
        wait_for(lambda: any(p.poll() is not None for p in procs), timeout=20, what="one exit")
        exited = [p.poll() is not None for p in procs]
        assert exited.count(True) == 1, "both launches ended"
        second, first = (procs[0], launches[1]) if exited[0] else (procs[1], launches[0])
        assert second.returncode == 0
        assert second.stderr is not None and "already running" in second.stderr.read()
        wait_for(lambda: first.version() == "1.0.0", what="the first serving")
        time.sleep(1.0)  # and it stays the only one
        assert [p.poll() is None for p in procs].count(True) == 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)


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


def test_demo_shows_an_update_offline(tmp_path: Path) -> None:
    """`trayupdater demo` is what a new user runs first: it must serve 1.0.0, then update to
    1.1.0 by itself, and stop cleanly, with no network beyond loopback."""
    from support import served_version

    port = free_port()
    (tmp_path / "none.toml").write_text("")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trayupdater",
            "--config",
            str(tmp_path / "none.toml"),
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "demo"),
            "demo",
            "--headless",
            "--publish-after",
            "1",
            "--duration",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: served_version(port) == "1.0.0", what="demo serving 1.0.0")
        wait_for(lambda: served_version(port) == "1.1.0", what="demo updated to 1.1.0")
        # The story, one line per event, without -v; the switch is told once it is done
        # (the proxy serves 1.1.0 a moment before), so wait for that line, then stop.
        wait_for(lambda: any("demo: switched to 1.1.0" in line for line in lines), what="story")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        reader.join(10)
        out = "".join(lines)
        assert "published 1.1.0" in out and "Traceback" not in out
        for line in ("demo: installed 1.0.0", "demo: downloading 1.1.0"):
            assert line in out, out
    finally:
        if proc.poll() is None:
            proc.kill()


def _demo_cli(tmp_path: Path, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "none.toml").write_text("")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "trayupdater",
            "--config",
            str(tmp_path / "none.toml"),
            "--port",
            str(free_port()),
            "--data-dir",
            str(data),
            "demo",
            "--headless",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_refuses_a_folder_it_did_not_create(tmp_path: Path) -> None:
    """`demo --data-dir X` used to delete X whatever it held."""
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = _demo_cli(tmp_path, precious, "--duration", "1")
    assert result.returncode == 1
    assert "was not created by the demo" in result.stderr and "Traceback" not in result.stderr
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.tex"]


def test_demo_reuses_its_own_folder(tmp_path: Path) -> None:
    from trayupdater.demo import DEMO_MARKER

    data = tmp_path / "demo"
    first = _demo_cli(tmp_path, data, "--duration", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (data / DEMO_MARKER).is_file() and (data / "state.json").is_file()
    (data / "leftover").write_text("from the first demo")
    second = _demo_cli(tmp_path, data, "--duration", "2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert not (data / "leftover").exists()  # a clean slate, in the demo's own folder


def test_demo_leaves_the_folder_of_a_running_demo_alone(tmp_path: Path) -> None:
    """A second `demo` on the folder of a running one emptied it: control.json and the
    running demo's versions went from under it."""
    from trayupdater.demo import DEMO_MARKER, prepare_demo_folder
    from trayupdater.errors import TrayUpdaterError
    from trayupdater.instance_lock import InstanceLock

    data = tmp_path / "demo"
    prepare_demo_folder(data)
    (data / "control.json").write_text("{}")
    running = InstanceLock(data)  # as the running demo's app holds it
    assert running.acquire()
    try:
        with pytest.raises(TrayUpdaterError, match="already running"):
            prepare_demo_folder(data)
        assert (data / "control.json").is_file() and (data / DEMO_MARKER).is_file()
    finally:
        running.release()
    prepare_demo_folder(data)  # once it has quit, the folder is emptied as before
    assert sorted(p.name for p in data.iterdir()) == sorted([DEMO_MARKER, "instance.lock"])


def test_the_app_serves_a_frozen_form_demo_child_itself(tmp_path: Path, monkeypatch) -> None:
    """A frozen build has no demo_server.py to copy: its demo archives hold only the
    VERSION/BEHAVIOUR lines, and `trayupdater demo-child SCRIPT PORT` serves them."""
    from support import served_version

    import trayupdater.demo_server as demo_server

    monkeypatch.setattr(demo_server, "__file__", str(tmp_path / "absent" / "demo_server.py"))
    script = tmp_path / "simple-server"
    script.write_text(demo_server.render_script("2.5.0"))
    assert "import" not in script.read_text()  # the frozen form: data only
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trayupdater", "demo-child", str(script), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: served_version(port) == "2.5.0", what="the demo child serving")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    script.write_text("import os; os.system('touch pwned')\n")
    bad = subprocess.run(
        [sys.executable, "-m", "trayupdater", "demo-child", str(script), str(free_port())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert bad.returncode == 1 and "not a demo child script" in bad.stderr
    assert not (tmp_path / "pwned").exists()
