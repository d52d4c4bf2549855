"""A chatty child's log stays bounded: rotated at start, while it runs, at its exit, and
deleted with its version. Real processes writing real files (see trayupdater.child_logs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import wait_for
from test_runtime import running

from trayupdater import child_logs
from trayupdater.app import App
from trayupdater.children import Child, adopt, free_port, kill_stale
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.status import Command

pytestmark = pytest.mark.skipif(os.name != "posix", reason="real POSIX processes and scripts")

LIMIT = 50_000  # the tests' MAX_BYTES: each line is ~1 KB, so 50 lines fill a file

# args: PORT (0: no HTTP) LINES (-1: forever) PAUSE EXIT_CODE. Serves GET -> 1.0.0.
CHATTY = """\
#!{python}
import http.server, itertools, sys, threading, time
port, count, pause, code = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])

class Version(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"1.0.0")

    def log_message(self, *args):
        pass

if port:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Version)
    threading.Thread(target=server.serve_forever, daemon=True).start()
for n in itertools.count() if count < 0 else range(count):
    sys.stdout.write(f"line {{n:08d}} " + "x" * 1000 + "\\n")
    sys.stdout.flush()
    time.sleep(pause)
print("goodbye", flush=True)
sys.exit(code)
"""


@pytest.fixture
def chatty(tmp_path: Path) -> Path:
    path = tmp_path / "chatty"
    path.write_text(CHATTY.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Small logs; ``watch(interval)`` gives the test its own watch thread."""
    monkeypatch.setattr(child_logs, "MAX_BYTES", LIMIT)

    def watch(interval: float) -> None:
        monkeypatch.setattr(child_logs, "WATCH", child_logs.LogWatch(interval))

    return watch


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for child in made:
        child.stop(timeout=2)


def files(log: Path) -> dict[str, int]:
    """The log and its backups: name -> size."""
    return {p.name: p.stat().st_size for p in sorted(log.parent.glob(log.name + "*"))}


def numbers(path: Path) -> list[int]:
    return [int(n) for n in re.findall(rb"^line (\d{8}) ", path.read_bytes(), re.M)]


def watch_bounded(log: Path, lines: int) -> int:
    """Wait until the child has written ``lines`` lines; the largest log size seen."""
    largest = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        largest = max(largest, log.stat().st_size)
        written = numbers(log)
        if written and written[-1] >= lines:
            return largest
        time.sleep(0.01)
    pytest.fail(f"the child did not write {lines} lines in 60 s")


def test_a_running_chatty_child_is_copy_truncated_and_keeps_writing(
    chatty: Path, limits: Callable[[float], None], children: list[Child], tmp_path: Path
) -> None:
    limits(0.05)
    log = tmp_path / "logs" / "child-1.0.0.log"
    child = Child(chatty, "1.0.0", command=["{exe}", "0", "-1", "0.002", "0"], log_path=log)
    children.append(child)
    child.start()
    # 600 lines: ~600 KB, twelve times the limit, written while it runs.
    largest = watch_bounded(log, 600)
    assert child.is_alive()  # the truncations never disturbed it
    assert largest < 6 * LIMIT, f"the running child's log reached {largest} bytes"
    sizes = files(log)
    assert set(sizes) == {log.name, f"{log.name}.1", f"{log.name}.2"}, sizes
    # A backup is the last LIMIT bytes, plus what the child wrote during the copy.
    assert sizes[f"{log.name}.1"] < 2 * LIMIT and sizes[f"{log.name}.2"] < 2 * LIMIT
    # It appends: after a truncation its writes start at offset 0, not at a hole of zeros.
    older = numbers(child_logs.backup_path(log, 1))
    wait_for(lambda: log.stat().st_size > 0, what="a line after the last truncation")
    current = log.read_bytes()
    assert b"\0" not in current and current.startswith(b"line ")
    newer = numbers(log)
    assert older == sorted(older) and older[-1] < newer[0]  # whole lines, in order


def test_a_big_log_is_rotated_at_start_and_a_burst_at_exit(
    chatty: Path, limits: Callable[[float], None], children: list[Child], tmp_path: Path
) -> None:
    limits(3600)  # no watch: only the start and the exit rotate
    log = tmp_path / "logs" / "child-1.0.0.log"
    log.parent.mkdir()
    log.write_bytes(b"".join(b"earlier run %04d\n" % n for n in range(8000)))  # 136 KB
    # 100 lines (~100 KB) in a burst, then it crashes.
    child = Child(chatty, "1.0.0", command=["{exe}", "0", "100", "0", "3"], log_path=log)
    children.append(child)
    child.start()
    assert child.wait_exit(30) and child.returncode == 3
    # At start the earlier run's log went to .1 (shifted to .2 by the rotation at exit).
    earlier = child_logs.backup_path(log, 2).read_bytes()
    assert earlier.startswith(b"earlier run ") and earlier.endswith(b"earlier run 7999\n")
    assert len(earlier) <= LIMIT
    this_run = child_logs.backup_path(log, 1).read_bytes()
    assert this_run.startswith(b"line ") and this_run.endswith(b"goodbye\n")
    assert log.stat().st_size == 0
    # Its crash report still ends with its last words, though they are in .1 now.
    assert child.exit_error("at once").details.endswith("goodbye")

    for _ in range(3):
        child.start()
        assert child.wait_exit(30)
    sizes = files(log)
    assert set(sizes) == {log.name, f"{log.name}.1", f"{log.name}.2"}, sizes  # two backups
    assert sum(sizes.values()) <= 2 * LIMIT
    assert b"earlier run" not in child_logs.backup_path(log, 2).read_bytes()


def test_an_adopted_chatty_child_is_watched_too(
    chatty: Path, limits: Callable[[float], None], tmp_path: Path
) -> None:
    limits(0.05)
    log = tmp_path / "child-1.0.0.log"
    port = free_port()
    # Started by "an earlier run of the app", which then died: O_APPEND, no one watching.
    code = (
        "import subprocess, sys;"
        "p = subprocess.Popen(sys.argv[2:], stdout=open(sys.argv[1], 'ab'),"
        " stderr=subprocess.STDOUT, start_new_session=True);"
        "print(p.pid)"
    )
    argv = [str(log), str(chatty), str(port), "-1", "0.002", "0"]
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    pid = int(out.stdout)
    try:
        wait_for(lambda: log.exists() and log.stat().st_size > 0, what="the orphan's output")
        child = adopt(pid, "1.0.0", port, exe=chatty, log_path=log, expect="1.0.0", timeout=10)
        assert child is not None
        largest = watch_bounded(log, 600)
        assert largest < 6 * LIMIT, f"the adopted child's log reached {largest} bytes"
        assert child_logs.backup_path(log, 1).exists()
        assert b"\0" not in log.read_bytes()
        child.stop()
    finally:
        kill_stale(pid, chatty, timeout=1)


def test_pruned_versions_take_their_logs_with_them(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    publish_version(feed, "1.0.0")
    app = app_factory(keep_versions=2)
    wait_for(running(app, "1.0.0"))
    logs = app.config.logs_dir
    # Left by versions removed before logs were cleaned up, and a backup of a kept one.
    for name in ("child-0.9.0.log", "child-0.9.0.log.1", "child-1.1.0.log.1", "notes.txt"):
        (logs / name).write_text("old\n")
    for version in ("1.1.0", "1.2.0"):
        publish_version(feed, version)
        assert app.updater.request(Command.CHECK).active == version
        wait_for(lambda: app.store.load_state().probation_until is None, what="probation over")

    def gone() -> bool:
        return not [p for p in logs.glob("child-*") if p.name.startswith(stale)]

    stale = ("child-1.0.0.", "child-0.9.0.")
    wait_for(lambda: app.store.get("1.0.0") is None and gone(), what="1.0.0 and its logs gone")
    names = {p.name for p in logs.iterdir()}
    assert {"child-1.1.0.log", "child-1.1.0.log.1", "child-1.2.0.log", "notes.txt"} <= names
