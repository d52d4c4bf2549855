"""One instance per data folder: the OS lock on instance.lock, held for the app's life.

Two real launches at the same moment are in test_headless.py; here: the lock between real
processes, the Windows code path (with a stand-in for msvcrt), a holder that does not
answer, and a self-update's successor, which starts while its predecessor holds the lock.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support import Instance, served_version, wait_for
from test_runtime import make_config, running

import trayupdater
from trayupdater import app as app_module
from trayupdater.app import App
from trayupdater.children import free_port
from trayupdater.control import CONTROL_FILE, ControlClient
from trayupdater.demo import publish_version
from trayupdater.errors import TrayUpdaterError
from trayupdater.feed import ReleaseFeed
from trayupdater.handover import Predecessor
from trayupdater.installation import Installation
from trayupdater.instance_lock import LOCK_FILE, InstanceLock, WindowsLocking

_HOLDER = """
import sys
from pathlib import Path
from trayupdater.instance_lock import InstanceLock

lock = InstanceLock(Path(sys.argv[1]))
print(lock.acquire(), flush=True)
sys.stdin.read()
"""


def _free(data: Path) -> bool:
    """Is the lock free? (Takes it for an instant when it is.)"""
    probe = InstanceLock(data)
    try:
        return probe.acquire()
    finally:
        probe.release()


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_the_lock_is_exclusive_between_processes_and_dies_with_its_holder(
    tmp_path: Path,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        assert not _free(tmp_path)
        holder.kill()  # kill -9: no clean-up, the OS drops the lock with the process
        holder.wait()
        assert _free(tmp_path)
        assert (tmp_path / LOCK_FILE).exists()  # never deleted (see instance_lock.py)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


class _FakeMsvcrt:
    """msvcrt.locking's contract: a byte range from the file position, per open handle;
    LK_NBLCK fails with EACCES when another handle holds it (byte locks are per file)."""

    LK_UNLCK, LK_LOCK, LK_NBLCK = 0, 1, 2

    def __init__(self) -> None:
        self.held: dict[tuple[int, int, int], int] = {}
        self.calls: list[tuple[str, int, int]] = []

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        position = os.lseek(fd, 0, os.SEEK_CUR)
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino, position)
        self.calls.append(({0: "unlock", 2: "try"}[mode], position, nbytes))
        owner = self.held.get(key)
        if mode == self.LK_NBLCK:
            if owner is not None and owner != fd:
                raise PermissionError(errno.EACCES, "Permission denied")
            self.held[key] = fd
        elif mode == self.LK_UNLCK:
            if owner != fd:
                raise PermissionError(errno.EACCES, "not locked by this handle")
            del self.held[key]


def test_windows_locks_the_first_byte_without_waiting(tmp_path: Path) -> None:
    msvcrt = _FakeMsvcrt()
    first = InstanceLock(tmp_path, backend=WindowsLocking(msvcrt))  # type: ignore[arg-type]
    second = InstanceLock(tmp_path, backend=WindowsLocking(msvcrt))  # type: ignore[arg-type]
    assert first.acquire() and first.held
    assert not second.acquire() and not second.held
    first.release()
    assert second.acquire()
    second.release()
    # Non-blocking (LK_LOCK would retry for 10 s), one byte at offset 0, unlocked the same.
    assert msvcrt.calls == [
        ("try", 0, 1),
        ("try", 0, 1),
        ("unlock", 0, 1),
        ("try", 0, 1),
        ("unlock", 0, 1),
    ]
    assert msvcrt.held == {}


def test_a_launch_waits_for_a_holder_that_does_not_answer_then_says_so(
    feed: ReleaseFeed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_version(feed, "1.0.0")
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setattr(app_module, "INSTANCE_WAIT_SECONDS", 0.6)
    holder = InstanceLock(data)  # an instance that is hung, or still starting
    assert holder.acquire()
    app = App(make_config(feed, data))
    with pytest.raises(TrayUpdaterError, match=r"holds the data folder .* but does not answer"):
        app.start()
    assert not (data / CONTROL_FILE).exists() and not (data / "state.json").exists()
    holder.release()
    app = App(make_config(feed, data))
    app.start()  # free now
    try:
        wait_for(running(app, "1.0.0"))
        assert not _free(data)  # held for the app's life ...
    finally:
        app.stop()
    assert _free(data)  # ... and released on stop


def test_a_second_app_in_the_window_before_control_json_is_refused(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """The first app holds the lock but has not written control.json yet: the second waits
    for it to answer instead of starting too."""
    publish_version(feed, "1.0.0")
    data = tmp_path / "data"
    first = App(make_config(feed, data))
    assert first.instance_lock.acquire()  # start() has just taken the lock
    second = App(make_config(feed, data))
    result: list[BaseException | None] = []

    def start_second() -> None:
        try:
            second.start()
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=start_second)
    thread.start()
    try:
        first.start()  # writes control.json, as the real first launch would next
        thread.join(15)
        assert result and isinstance(result[0], app_module.AlreadyRunningError)
        assert result[0].client.pid == os.getpid()
    finally:
        first.stop()
        if result == [None]:  # it started after all
            second.stop()


# --- the self-update successor -------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="the socket is handed over by fd inheritance")
def test_a_self_update_successor_starts_while_its_predecessor_holds_the_lock(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """This test is the predecessor: it holds the lock and hands its listening socket to a
    real `trayupdater run --headless` through the real handover protocol. The successor
    must serve without waiting for the lock (the predecessor exits only once it serves),
    then take the lock when the predecessor lets go."""
    publish_version(feed, "1.0.0")
    data = tmp_path / "data"
    installed = App(make_config(feed, data))  # 1.0.0 installed, as before a self-update
    installed.start()
    try:
        wait_for(running(installed, "1.0.0"))
    finally:
        installed.stop()
    predecessor_lock = InstanceLock(data)
    assert predecessor_lock.acquire()
    instance = Instance(feed, data, free_port())
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    exe = Path(sys.executable)
    predecessor = Predecessor(
        Installation(exe, exe, "file", "linux"),
        ["-m", "trayupdater", *instance.args, "run", "--headless"],
        environ=instance.env,
        ready_timeout=60,
    )
    proc, channel = predecessor.hand_to(listener, trayupdater.__version__)
    try:
        assert served_version(port) == "1.0.0"  # the successor serves on our socket
        assert predecessor_lock.held
        channel.send({"commit": True})  # we retire: exit, which drops the lock
        channel.close()
        listener.close()
        predecessor_lock.release()
        wait_for(lambda: not _free(data), timeout=10, what="the successor holding the lock")
        third = instance.cli("run", "--headless", timeout=60)  # a launch after the update
        assert third.returncode == 0 and "already running" in third.stderr, third.stderr
        client = ControlClient.find(data)
        assert client is not None and client.pid == proc.pid
    finally:
        listener.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert _free(data)


def test_a_retired_app_lets_go_of_its_control_endpoint_and_lock(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """After a self-update the old process only watches its successor (probation): it must
    not answer as the app, and the lock must be free for the successor, or for the old build
    started again if the successor crashes."""
    publish_version(feed, "1.0.0")
    data = tmp_path / "data"
    app = App(make_config(feed, data))
    app.start()
    try:
        wait_for(running(app, "1.0.0"))
        assert ControlClient.find(data) is not None and not _free(data)
        app.updater.retire()
        assert ControlClient.find(data) is None
        assert _free(data)
    finally:
        app.stop()


def test_the_waiting_thread_gives_up_on_release(tmp_path: Path) -> None:
    holder = InstanceLock(tmp_path)
    assert holder.acquire()
    waiter = InstanceLock(tmp_path)
    thread = waiter.acquire_when_free(poll=0.05)
    waiter.release()  # the successor stopped before its predecessor exited
    thread.join(5)
    assert not thread.is_alive()
    holder.release()
    assert not waiter.acquire() and _free(tmp_path)  # released for good: never taken later
