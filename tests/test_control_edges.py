"""The control endpoint and the CLI met as an attacker (or a careless script) would.

Another program on the port a stale control.json names, odd command-line values, and
refusals that must show in the exit code.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_for
from test_runtime import make_config, running

from trayupdater import cli
from trayupdater.app import App
from trayupdater.control import CONTROL_FILE, ControlClient
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.instance_lock import LOCK_FILE
from trayupdater.store import VersionStore


class _Stranger:
    """Another program's HTTP server: it answers everything 200 with a plausible status
    and keeps every Authorization header it is sent."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                seen.extend(self.headers.get_all("Authorization") or [])
                body = json.dumps({"phase": "running", "active": "6.6.6"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stranger() -> Iterator[_Stranger]:
    server = _Stranger()
    yield server
    server.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _crashed_app_left(data: Path, *, port: int, pid: int) -> None:
    """What an app killed with -9 leaves: its lock file (unlocked now) and control.json."""
    data.mkdir(parents=True, exist_ok=True)
    (data / LOCK_FILE).touch()
    (data / CONTROL_FILE).write_text(json.dumps({"port": port, "pid": pid, "token": "s3cret"}))


def test_a_stale_control_file_does_not_send_the_token_to_another_program(
    tmp_path: Path, stranger: _Stranger
) -> None:
    """The app was killed; its control port now belongs to another program. The CLI sent
    that program the token and took its answers for the app's (`status` said "running")."""
    _crashed_app_left(tmp_path, port=stranger.port, pid=_dead_pid())
    assert ControlClient.find(tmp_path) is None
    assert stranger.seen == []


def test_a_reused_pid_does_not_make_a_stale_control_file_live(
    tmp_path: Path, stranger: _Stranger
) -> None:
    """The pid in control.json now names another live process (pids are reused), but no
    app holds the data folder's instance lock: nobody runs here."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _crashed_app_left(tmp_path, port=stranger.port, pid=other.pid)
        assert ControlClient.find(tmp_path) is None
        assert stranger.seen == []
    finally:
        other.kill()
        other.wait()


def test_an_app_starts_after_a_crash_whatever_listens_on_the_old_control_port(
    feed: ReleaseFeed, tmp_path: Path, stranger: _Stranger
) -> None:
    """Before: the new app asked the stranger, took its 200 for "already running", refused
    to start (a login start just exited 0) and sent it the token and a check command."""
    publish_version(feed, "1.0.0")
    data = tmp_path / "data"
    _crashed_app_left(data, port=stranger.port, pid=_dead_pid())
    app = App(make_config(feed, data))
    app.start()  # raised AlreadyRunningError
    try:
        wait_for(running(app, "1.0.0"), what="1.0.0 running")
        assert stranger.seen == []
    finally:
        app.stop()


# --- the CLI with odd values -----------------------------------------------------------------


def _cli(app: App, tmp_path: Path, *args: str) -> int:
    config = tmp_path / "none.toml"
    config.write_text("")
    return cli.main([*args, "--config", str(config), "--data-dir", str(app.config.data_dir)])


def test_an_empty_pause_length_is_refused_not_taken_as_forever(app: App, tmp_path: Path) -> None:
    """`trayupdater pause --for "$LENGTH"` with LENGTH unset paused updates until resumed."""
    assert _cli(app, tmp_path, "pause", "--for", "") == 1
    assert app.updater.status().paused is False


def test_an_empty_version_to_skip_is_refused_not_taken_as_the_latest(
    app: App, feed: ReleaseFeed, tmp_path: Path
) -> None:
    """`trayupdater skip "$VERSION"` with VERSION unset skipped whatever was newest."""
    assert _cli(app, tmp_path, "pause") == 0
    publish_version(feed, "1.1.0")
    assert _cli(app, tmp_path, "check") == 0
    assert app.updater.status().latest == "1.1.0"
    assert _cli(app, tmp_path, "skip", "") == 1
    assert VersionStore(app.config.data_dir).load_state().skipped is None


def test_a_refused_update_control_exits_1(
    app: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Skipping the running version is refused by the app; the CLI printed the refusal but
    exited 0, so a script took it for done."""
    assert _cli(app, tmp_path, "skip", "1.0.0") == 1
    assert "409: 1.0.0 is the running version" in capsys.readouterr().err
    assert VersionStore(app.config.data_dir).load_state().skipped is None


# --- an app that holds the data folder but does not answer -------------------------------


@pytest.fixture
def mute_app(tmp_path: Path) -> Iterator[Path]:
    """An app that holds its data folder's lock and has a control port, but whose answer
    never comes (hung, stopped with SIGSTOP, swapping): its data folder."""
    from trayupdater.control import ControlServer
    from trayupdater.instance_lock import InstanceLock
    from trayupdater.status import Status

    data = tmp_path / "data"
    data.mkdir()
    lock = InstanceLock(data)
    assert lock.acquire()
    release = threading.Event()

    def status() -> Status:
        release.wait(30)
        return Status()

    server = ControlServer(
        data,
        status=status,
        request=lambda command, timeout, payload: status(),
        send=lambda command, payload: None,
    )
    server.start()
    yield data
    release.set()
    server.close()
    lock.release()


def test_a_running_app_that_does_not_answer_is_not_reported_as_not_running(
    mute_app: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` said "not running" (exit 3) about an app that runs, after making a store
    beside it; `quit` and the others said "trayupdater is not running", and `check` went
    on to update the store that app owns by itself."""
    config = tmp_path / "none.toml"
    config.write_text("")
    code = cli.main(["status", "--config", str(config), "--data-dir", str(mute_app)])
    err = capsys.readouterr().err
    assert code == 1
    assert "does not answer" in err
    assert not (mute_app / "versions").exists()
