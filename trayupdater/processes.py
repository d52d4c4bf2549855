"""OS processes for children: spawning, waiting, signalling, and leftovers of a crash.

Children must not outlive the app:

- POSIX: each child starts in its own session (so its own process group): Ctrl-C in the
  app's terminal reaches only the app, which stops children in order, and stopping a child
  signals its whole group, grandchildren included. When the leader has exited, what is left
  of its group is SIGKILLed *before* the leader is reaped: an unreaped leader keeps its pid,
  hence the group id, from being recycled, so the kill cannot hit a stranger.
- Linux: the child also gets ``PR_SET_PDEATHSIG(SIGTERM)``, so it is told to stop when the
  app dies, even by SIGKILL. The kernel sends that signal when the *thread* that forked the
  child exits, not the process; so every child is forked by one long-lived daemon thread of
  this module (:data:`SPAWNER`), never by the (possibly short-lived) calling thread.
- macOS has no pdeathsig: the app records child pids (state.json) and calls
  :func:`kill_stale` (or ``children.adopt``) at its next start.
- Windows: children get their own process group (``CREATE_NEW_PROCESS_GROUP``) and are
  stopped with CTRL_BREAK_EVENT, then TerminateProcess. That event needs a console shared
  with the app; a windowed app without one goes straight to TerminateProcess. A Job object
  with KILL_ON_JOB_CLOSE would also end children when the app dies; it is not done here.
  Grandchildren are not reached on Windows, and kill_stale / adopt do nothing there.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

_POSIX = os.name == "posix"
_WINDOWS = os.name == "nt"
_LINUX = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
KILL_WAIT = 10.0  # after SIGKILL only a process stuck in the kernel keeps us waiting
_T = TypeVar("_T")


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited (exit code unknown: not our child)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


def pid_running(pid: int) -> bool:
    """Is ``pid`` a live process (a zombie counts as gone)?

    On Windows there is no cheap check (and ``os.kill(pid, 0)`` would *terminate* it), so
    the answer is "maybe": True.
    """
    if pid <= 0:
        return False
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    if _LINUX:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    return True


def cmdline_mentions(pid: int, exe: Path) -> bool:
    """Does process ``pid``'s command line contain the path ``exe`` as one argument?"""
    wanted = {str(exe), os.path.realpath(exe)}
    if _LINUX:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        args = [os.fsdecode(a) for a in raw.split(b"\0") if a]
        return any(
            a in wanted or (os.path.isabs(a) and os.path.realpath(a) in wanted) for a in args
        )
    if _POSIX:  # macOS and BSDs: no /proc; ps prints the command line as one string
        try:
            out = subprocess.run(
                ["ps", "-ww", "-o", "command=", "-p", str(pid)],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return False
        return any(w in out for w in wanted)
    return False


def signal_group(pid: int, sig: int, *, leader_is_ours: bool) -> None:
    """Send ``sig`` to the process group led by ``pid``, or just to ``pid`` if it leads none.

    Only call while ``pid`` is alive or an unreaped child: then it cannot have been recycled.
    """
    try:
        if leader_is_ours or os.getpgid(pid) == pid:
            os.killpg(pid, sig)
            return
    except ProcessLookupError:
        pass  # left its group (or gone): fall back to the process itself
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def open_pidfd(pid: int) -> int | None:
    """A pidfd pins one process (no pid-reuse confusion) and polls readable when it exits."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved in the parent so the forked child only has to call it."""
    if not _LINUX:
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    prctl.restype = ctypes.c_int
    return prctl  # type: ignore[no-any-return]


def make_preexec(header: str) -> Callable[[], None]:
    """What the forked child runs before exec: pdeathsig, then the log header with its pid.

    Writing the header here, not in the parent after Popen returns, puts it before anything
    the program prints.
    """
    prctl = _prctl()
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
            if os.getppid() != parent:  # the app died between fork and prctl: too late
                os._exit(128 + sigterm)
        os.write(1, f"{header.format(pid=os.getpid())}\n".encode())

    return preexec


class Spawner:
    """Runs every Popen on one long-lived daemon thread (see PR_SET_PDEATHSIG above)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def run(self, func: Callable[[], _T]) -> _T:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # also after os.fork()
                self._thread = threading.Thread(
                    target=self._loop, name="trayupdater-spawner", daemon=True
                )
                self._thread.start()
            if threading.current_thread() is self._thread:
                return func()
        future: Future[object] = Future()
        self._queue.put((func, future))
        return future.result()  # type: ignore[return-value]

    def _loop(self) -> None:
        while True:
            func, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(func())
            except BaseException as exc:  # handed to the caller, who re-raises it
                future.set_exception(exc)


SPAWNER = Spawner()


def wait_process(
    proc: subprocess.Popen[bytes] | None,
    pid: int,
    pidfd: int | None,
    adopted: bool,
    timeout: float | None,
) -> bool:
    """Has the process exited within ``timeout``? POSIX: without reaping it."""
    if _WINDOWS:
        assert proc is not None
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
    # No pidfd (macOS, old kernels): poll with growing steps.
    deadline = None if timeout is None else time.monotonic() + timeout
    step = 0.005
    while True:
        if adopted:
            exited = not pid_running(pid)
        elif hasattr(os, "waitid"):
            try:
                exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            except ChildProcessError:
                exited = True  # already reaped
        else:
            assert proc is not None
            exited = proc.poll() is not None  # reaps: the group clean-up is skipped then
        if exited:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        wait = step if deadline is None else min(step, max(0.0, deadline - time.monotonic()))
        time.sleep(wait)
        step = min(step * 2, 0.05)


# --- leftovers of an earlier run of the app ----------------------------------------------------


def kill_stale(pid: int, exe: Path, *, timeout: float = 5.0) -> bool:
    """Kill an orphan child an earlier (crashed) run of the app left behind.

    Only if ``pid`` is alive and has ``exe`` on its command line: a recycled pid belonging to
    something else is left alone. Its group gets SIGTERM, then SIGKILL after ``timeout`` s;
    if it happens to be our own child it is reaped. True if it was ours and is now gone.
    Windows: always False.
    """
    if not _POSIX or pid <= 1 or pid == os.getpid():
        return False
    pidfd = open_pidfd(pid)  # pins the process: it cannot be swapped between check and kill
    try:
        if not pid_running(pid) or not cmdline_mentions(pid, exe):
            return False
        logger.info("stopping stale child pid %d (%s)", pid, exe)
        try:
            leads_group = os.getpgid(pid) == pid
        except ProcessLookupError:
            return True  # it went away by itself meanwhile
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, KILL_WAIT)):
            signal_group(pid, sig, leader_is_ours=False)
            if wait_process(None, pid, pidfd, True, wait):  # a zombie counts as exited
                break
        if leads_group:
            # Leftovers of its group (grandchildren that ignored SIGTERM). While the group has
            # members its id cannot be handed out as a new pid; once empty this is ESRCH.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return not pid_running(pid)
    finally:
        if pidfd is not None:
            os.close(pidfd)
