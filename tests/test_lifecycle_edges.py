"""Lifecycle edges a real deployment meets, found by attacking the running app.

Real feed, real child processes, the real proxy on an OS-assigned port (see test_runtime).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Instance, alive, publish_script, recorded_child_pid, wait_for
from test_runtime import get, make_config, running

from trayupdater.app import App
from trayupdater.children import free_port
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.status import Command, Phase
from trayupdater.store import MANIFEST, VersionStore


def _installed_then_stopped(feed: ReleaseFeed, data: Path, versions: list[str]) -> App:
    """An app that installed ``versions`` one after another (each past probation), stopped."""
    publish_version(feed, versions[0])
    app = App(make_config(feed, data))
    app.start()
    try:
        wait_for(running(app, versions[0]), what=f"{versions[0]} running")
        for version in versions[1:]:
            publish_version(feed, version)
            assert app.updater.request(Command.CHECK).active == version
            time.sleep(1.2)  # past probation
    finally:
        app.stop()
    return app


@pytest.mark.parametrize("how", ["folder deleted", "manifest deleted"])
def test_the_only_version_gone_from_disk_is_installed_again(
    feed: ReleaseFeed, tmp_path: Path, how: str
) -> None:
    """state.json names 1.0.0, but its folder was deleted (by hand, a cleaner, an rmtree
    that was interrupted: its manifest went first). The app booted into "no installed
    version could be started", and every check then said "up to date (1.0.0)": 503 for
    good, although the release is a download away."""
    data = tmp_path / "data"
    app = _installed_then_stopped(feed, data, ["1.0.0"])
    folder = app.store.folder("1.0.0")
    if how == "folder deleted":
        shutil.rmtree(folder)
    else:
        (folder / MANIFEST).unlink()

    again = App(make_config(feed, data))
    again.start()
    try:
        wait_for(running(again, "1.0.0"), timeout=20, what="1.0.0 installed again")
        assert get(again)[:2] == (200, "1.0.0")
        assert again.store.load_state().blocked == []
    finally:
        again.stop()


def test_an_active_version_gone_from_disk_is_not_blocked(feed: ReleaseFeed, tmp_path: Path) -> None:
    """1.1.0 active, 1.0.0 before it; 1.1.0's folder deleted. Falling back to 1.0.0 is
    right, but 1.1.0 was blocked as if its release had failed: the app never took it
    again, though nothing was wrong with it."""
    data = tmp_path / "data"
    app = _installed_then_stopped(feed, data, ["1.0.0", "1.1.0"])
    shutil.rmtree(app.store.folder("1.1.0"))

    again = App(make_config(feed, data))
    again.start()
    try:
        wait_for(running(again, "1.1.0"), timeout=20, what="1.1.0 installed again")
        assert again.store.load_state().blocked == []
        assert get(again)[:2] == (200, "1.1.0")
    finally:
        again.stop()


def test_the_running_version_gone_from_disk_is_installed_again_after_a_crash(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """Its folder is deleted while it runs, then the child dies: the restart found nothing
    to start and stopped at "the active version is no longer installed", 503 for good."""
    publish_version(feed, "1.0.0")
    app = App(make_config(feed, tmp_path / "data"))
    app.start()
    try:
        wait_for(running(app, "1.0.0"), what="1.0.0 running")
        time.sleep(1.2)  # past probation: a restart, not a failed probation
        shutil.rmtree(app.store.folder("1.0.0"))
        pid = app.store.load_state().child_pid
        assert pid
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: app.store.load_state().child_pid not in (None, pid),
            timeout=20,
            what="1.0.0 installed again and started",
        )
        wait_for(running(app, "1.0.0"), what="1.0.0 running again")
        assert get(app)[:2] == (200, "1.0.0")
        assert app.store.load_state().blocked == []
    finally:
        app.stop()


def _processes_under(folder: Path) -> list[int]:
    """Live processes whose command line names a file under ``folder`` (our children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if os.fsencode(folder) in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def test_quit_while_a_new_version_starts_slowly_is_answered_at_once(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """1.1.0 takes long to listen (a cold disk, a migration at start). "Quit" (the CLI, the
    tray, logout's SIGTERM) waited behind its health check for up to health_timeout: the
    app was not gone within a login session's or a service manager's stop timeout, and a
    SIGTERM stop gave up on the worker after 30 s, leaving children unsupervised."""
    data = tmp_path / "data"
    publish_version(feed, "1.0.0")
    app = App(make_config(feed, data, health_timeout=60))
    app.start()
    try:
        wait_for(running(app, "1.0.0"), what="1.0.0 running")
        publish_version(feed, "1.1.0", behaviour={"SLOW_START_SECONDS": 40})
        app.updater.send(Command.CHECK)
        wait_for(
            lambda: app.updater.status().phase is Phase.UPDATING,
            what="1.1.0 starting",
        )
        time.sleep(0.5)  # well inside its health wait
        asked = time.monotonic()
        app.updater.request(Command.QUIT, timeout=60)
        took = time.monotonic() - asked
    finally:
        app.stop()
    assert took < 10, f"quit took {took:.1f} s"
    assert _processes_under(data) == []
    state = app.store.load_state()
    assert state.active == "1.0.0" and state.blocked == []


@pytest.fixture
def instance(feed: ReleaseFeed, tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(feed, tmp_path / "data", free_port(), DEMO_IGNORE_SIGTERM="1")
    yield inst
    inst.kill()
    for pid in _processes_under(inst.data):  # only if a test failed: no orphan outlives it
        os.kill(pid, signal.SIGKILL)


def test_sighup_stops_the_headless_app_cleanly(feed: ReleaseFeed, instance: Instance) -> None:
    """`trayupdater run --headless` in a terminal or an SSH session that closes gets SIGHUP.
    It was not handled: the app died on the spot, no drain, state.json naming a dead child,
    and a child that ignores SIGTERM (the death signal it is given) ran on, orphaned,
    holding its port and memory until the next launch."""
    publish_version(feed, "1.0.0")
    proc = instance.start()
    wait_for(lambda: instance.version() == "1.0.0", what="serving 1.0.0")
    child_pid = recorded_child_pid(instance.data)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=30) == 0
    wait_for(lambda: not alive(child_pid), timeout=10, what="the child to stop")
    assert _processes_under(instance.data) == []
    state = VersionStore(instance.data).load_state()
    assert state.active == "1.0.0" and state.child_pid is None


# A server whose listener dies while its process lives on (a crashed accept loop, a closed
# listening socket after an error): it closes its listening socket once a file "drop" appears
# beside it (and removes the file, so the copy started next serves on).
_DROPPING_SERVER = """\
import os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "1.0.0"
FLAG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drop")

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = VERSION.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True

def drop_when_asked():
    while not os.path.exists(FLAG):
        time.sleep(0.05)
    server.shutdown()
    server.server_close()
    os.unlink(FLAG)
    print("listener closed; the process lives on", flush=True)

threading.Thread(target=drop_when_asked, daemon=True).start()
server.serve_forever(poll_interval=0.05)
while True:
    time.sleep(3600)
"""


def test_a_child_that_stops_listening_after_probation_is_restarted(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """Past probation only the child's exit was watched. One whose listener died but whose
    process lived on was "Running" for good while every request was held, then failed
    (503/502): no restart, no error in the status, nothing for the user to see."""
    publish_script(feed, "1.0.0", _DROPPING_SERVER)
    app = App(make_config(feed, tmp_path / "data", hold_seconds=2))
    app.start()
    try:
        wait_for(running(app, "1.0.0"), what="1.0.0 running")
        time.sleep(1.5)  # past probation
        pid = app.store.load_state().child_pid
        assert pid and get(app)[:2] == (200, "1.0.0")
        installed = app.store.get("1.0.0")
        assert installed is not None
        flag = installed.executable.parent / "drop"
        flag.write_text("")
        wait_for(lambda: not flag.exists(), what="the child to close its listener")
        port = app.store.load_state().child_port
        assert port
        with pytest.raises(ConnectionRefusedError):  # new connections: nobody listens
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        wait_for(
            lambda: app.store.load_state().child_pid not in (None, pid),
            timeout=20,
            what="the deaf child replaced",
        )
        wait_for(running(app, "1.0.0"), what="1.0.0 running again")
        assert get(app)[:2] == (200, "1.0.0")
        assert not alive(pid)
    finally:
        app.stop()
