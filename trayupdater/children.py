"""Start, health-check and stop a child server process.

A :class:`Child` is one version of the server program running on one loopback port. Its
stdout and stderr go straight to a log file (no pipe, so nothing is lost if the app dies);
:mod:`trayupdater.child_logs` keeps that file from growing without limit.
Restarting after a crash is the update worker's decision (it also moves the proxy), so it
lives in updater.py; this module only reports the exit (:meth:`Child.wait_exit`).

How children are kept from outliving the app (process groups, pdeathsig, the spawner
thread) is :mod:`trayupdater.processes`; what a child is started with (its argv and an
environment without secrets), :mod:`trayupdater.child_command`.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO

from . import child_logs
from .child_command import DEFAULT_COMMAND, child_environment, render_command
from .errors import ChildError, ConfigError
from .processes import (
    KILL_WAIT,
    SPAWNER,
    cmdline_mentions,
    describe_exit,
    kill_stale,
    make_preexec,
    open_pidfd,
    pid_running,
    signal_group,
    wait_process,
)
from .release_model import parse_version

__all__ = ["Child", "adopt", "describe_exit", "free_port", "kill_stale", "pid_running"]

logger = logging.getLogger(__name__)


_POSIX = os.name == "posix"
_WINDOWS = os.name == "nt"
_LINUX = sys.platform.startswith("linux")
_LOG_TAIL_LINES = 20
_IN_USE = {errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE)}


# --- small helpers ---------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago (the child may still lose a race for it:
    it then fails to bind, exits, and the caller sees a ChildError and can try again)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_taken(host: str, port: int) -> bool:
    """Does a socket of another program hold ``port`` on ``host`` (binding it fails)?"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if os.name == "posix":  # TIME_WAIT is no owner (Windows' option would share the port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno in _IN_USE
    return False


def _strip_v(text: str) -> str:
    text = text.strip()
    return text[1:] if text[:1] in ("v", "V") else text


def version_matches(answer: str, expect: str) -> bool:
    """Does a health answer match the expectation? A leading ``v`` is tolerated on both
    sides and equal versions in other spellings match (``1.3.0-rc.1`` == ``1.3.0rc1``, the
    form the release model normalises to). An empty expectation accepts any answer."""
    if expect == "":
        return True
    got, want = _strip_v(answer), _strip_v(expect)
    if got == want:
        return True
    got_v, want_v = parse_version(got), parse_version(want)
    return got_v is not None and got_v == want_v


def _http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, str]:
    """Status and (at most 64 KiB of) body, the whole exchange within ``timeout``: each
    read's own timeout would let a child that drips its answer hold the caller for hours."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    cutoff: threading.Timer | None = None
    try:
        conn.connect()
        cutoff = threading.Timer(timeout, _cut, args=(conn.sock,))
        cutoff.daemon = True
        cutoff.start()
        conn.request("GET", path, headers={"Connection": "close", "User-Agent": "trayupdater"})
        response = conn.getresponse()
        return response.status, response.read(65536).decode("utf-8", "replace")
    finally:
        if cutoff is not None:
            cutoff.cancel()
        conn.close()


def _cut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed meanwhile
        sock.shutdown(socket.SHUT_RDWR)


# --- one child ---------------------------------------------------------------------------------


class Child:
    """One version of the server program, on one port.

    ``command`` is the argv template (placeholders ``{exe} {port} {version} {host}``). The
    child's environment is the app's minus every secret (see :func:`child_environment`),
    plus ``env``. ``secrets``: values (the configured token) no variable may carry.
    ``stop_signal`` (POSIX) is SIGTERM unless given:
    note that jischr/simple-server shuts down gracefully on SIGINT only and simply dies on
    SIGTERM, which is harmless once the proxy has drained it.
    """

    def __init__(
        self,
        exe: Path,
        version: str,
        *,
        command: Sequence[str] = DEFAULT_COMMAND,
        port: int | None = None,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[str] = (),
        cwd: Path | None = None,
        host: str = "127.0.0.1",
        stop_signal: int | None = None,
    ) -> None:
        if port is not None and not 1 <= port <= 65535:
            raise ConfigError(f"child port must be 1..65535, got {port}")
        self.exe = Path(exe)
        self.version = version
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.command = tuple(command)
        render_command(self.command, exe=self.exe, port=self.port, version=version, host=host)
        self.log_path = Path(log_path)
        self._env = dict(env) if env is not None else None
        self._secrets = tuple(secrets)
        self._cwd = cwd
        self._stop_signal = int(stop_signal if stop_signal is not None else signal.SIGTERM)

        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._running = False
        self._adopted = False
        self._generation = 0  # bumped at each start: waits on an older process are ignored
        self._returncode: int | None = None
        self._log_offset: int | None = 0  # where this run's lines start; None: rotated since
        self.started_at: float | None = None  # time.monotonic() of the last start
        self.exited_at: float | None = None  # time.monotonic() when its exit was noticed
        # Set by stop(): the exit that follows is on purpose and must not be restarted.

    def __repr__(self) -> str:
        state = "running" if self._running else describe_exit(self._returncode)
        return f"<Child {self.name} port {self.port} pid {self._pid} {state}>"

    @property
    def name(self) -> str:
        return f"{self.exe.name} {self.version}"

    @property
    def pid(self) -> int | None:
        """The pid of the current (or last) process; None before the first start."""
        return self._pid

    @property
    def returncode(self) -> int | None:
        """Exit code once exited (negative: killed by that signal); None while running,
        before start, and for an adopted process (not our child: its code is unknown)."""
        self.is_alive()
        return self._returncode

    @property
    def uptime(self) -> float:
        """Seconds the last process ran (so far, if it still runs)."""
        if self.started_at is None:
            return 0.0
        end = time.monotonic() if self._running or self.exited_at is None else self.exited_at
        return max(0.0, end - self.started_at)

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the process. Raises ChildError (with the log tail) if it cannot be executed."""
        with self._lock:
            if self._running and not self.wait_exit(0):
                raise ChildError(f"{self.name} is already running (pid {self._pid})")
            self._start_locked()

    def _start_locked(self) -> None:
        argv = render_command(
            self.command, exe=self.exe, port=self.port, version=self.version, host=self.host
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        header = f"--- started {stamp} pid {{pid}} port {self.port}"
        child_logs.rotate_if_big(self.log_path)  # no process writes it now: rotate before
        with child_logs.open_log(self.log_path) as log:
            self._log_offset = log.tell()
            try:
                proc = SPAWNER.run(lambda: self._popen(argv, log, header))
            except (OSError, subprocess.SubprocessError) as exc:
                log.write(f"--- could not start {argv!r}: {exc}\n".encode())
                log.flush()
                raise ChildError(
                    f"could not start {self.name} ({self.exe}): "
                    f"{getattr(exc, 'strerror', None) or exc}",
                    details=self.log_tail(),
                ) from exc
            if not _POSIX:  # no preexec_fn there: the header follows the fork instead
                log.write(f"{header.format(pid=proc.pid)}\n".encode())
        self._proc = proc
        self._pid = proc.pid
        self._pidfd = open_pidfd(proc.pid)
        self._running = True
        self._adopted = False
        self._returncode = None
        self._generation += 1
        self.started_at = time.monotonic()
        self.exited_at = None
        child_logs.WATCH.add(self, self._check_log)
        logger.info("started %s on port %d, pid %d", self.name, self.port, proc.pid)

    def _popen(self, argv: list[str], log: IO[bytes], header: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self._cwd,
            env=self._child_env(),
            close_fds=True,
            start_new_session=_POSIX,
            preexec_fn=make_preexec(header) if _POSIX else None,
            creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
        )

    def _child_env(self) -> dict[str, str]:
        return child_environment(os.environ, self._env or {}, self._secrets)

    def _adopt(self, pid: int) -> None:
        """Take over a process a previous run of the app started (see adopt())."""
        with self._lock:
            self._proc = None
            self._pid = pid
            self._pidfd = open_pidfd(pid)
            self._running = True
            self._adopted = True
            self._returncode = None
            self._generation += 1
            self.started_at = time.monotonic()
            self.exited_at = None
            with contextlib.suppress(OSError):
                self._log_offset = self.log_path.stat().st_size
            # It appends (O_APPEND from the run that started it), so copy-truncate works.
            child_logs.WATCH.add(self, self._check_log)

    # -- health ------------------------------------------------------------------------------

    def wait_healthy(
        self,
        *,
        path: str = "/version",
        expect: str | None = None,
        timeout: float = 20.0,
        interval: float = 0.025,
        check: Callable[[], None] | None = None,
    ) -> None:
        """Poll ``GET path`` until it answers 200 with ``expect`` (default: the version).

        Raises ChildError at once if the process exits (with its exit code and last log
        lines), or after ``timeout`` seconds saying what the server last answered. It does
        not stop an unhealthy child: the caller decides. ``check`` is called before each
        poll and may raise to give up early (an urgent command: :meth:`Interrupt.check`).
        """
        if self._pid is None:
            raise ChildError(f"{self.name} was never started")
        want = self.version if expect is None else expect
        deadline = time.monotonic() + timeout
        last = "never answered"
        while True:
            if check is not None:
                check()
            if self.wait_exit(0):
                raise self.exit_error("before it became healthy")
            remaining = deadline - time.monotonic()
            try:
                status, body = _http_get(self.host, self.port, path, max(0.1, min(2.0, remaining)))
            except (OSError, http.client.HTTPException) as exc:
                last = f"never answered ({exc})" if last.startswith("never") else last
            else:
                if status == 200 and version_matches(body, want):
                    return
                shown = body.strip()[:80] or "an empty body"
                last = f"answered {shown}" if status == 200 else f"answered HTTP {status} {shown}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                expected = f"expected {want}" if want else "expected any 200 answer"
                raise ChildError(
                    f"{self.name} on port {self.port} not healthy after {timeout:g} s: "
                    f"GET {path} {last}, {expected}"
                )
            if self.wait_exit(min(interval, remaining)):  # wakes at once if it dies
                raise self.exit_error("before it became healthy")

    def exit_error(self, when: str) -> ChildError:
        """The error for an exit ``when`` (say "before it became healthy"); the pid, port
        and the end of the child's log go to the details."""
        return ChildError(
            f"{self.name} {describe_exit(self._returncode)} {when}",
            details=f"pid {self._pid}, port {self.port}; its log ends with:\n{self.log_tail()}",
        )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines this run wrote to the log (from its header on, unless the log was
        rotated since: then the end of the rotated part comes first)."""
        try:
            text = child_logs.read_tail(self.log_path, self._log_offset)
        except OSError as exc:
            return f"(log {self.log_path} unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def _check_log(self) -> None:
        """Rotate the log if it passed the limit (the watch thread, and at exit)."""
        if child_logs.rotate_if_big(self.log_path):
            self._log_offset = None

    # -- exit --------------------------------------------------------------------------------

    def is_alive(self) -> bool:
        return not self.wait_exit(0)

    def wait_exit(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s (None: forever) for the process to exit; True once it has.

        On exit, what is left of its process group is killed and the process is reaped.
        """
        with self._lock:
            if not self._running:
                return True
            generation = self._generation
            proc, pid, adopted = self._proc, self._pid, self._adopted
            # A private copy: another thread may close the original when it reaps.
            pidfd = os.dup(self._pidfd) if self._pidfd is not None else None
        assert pid is not None
        try:
            exited = wait_process(proc, pid, pidfd, adopted, timeout)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if exited:
            with self._lock:
                if self._generation == generation and self._running:
                    self._finish_locked()
        return exited

    def _finish_locked(self) -> None:
        proc = self._proc
        if proc is not None:
            if _POSIX and proc.returncode is None:
                # The leader is exited but unreaped, so its pid (the group id) is still ours:
                # this reaches only the leftovers of its group (grandchildren, workers).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            self._returncode = proc.wait()
        else:
            self._returncode = None  # adopted: its real parent (init) reaps it
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        child_logs.WATCH.discard(self)
        self._check_log()  # a burst just before the exit would wait for the next start
        self._running = False
        self.exited_at = time.monotonic()
        logger.info("%s (pid %s) %s", self.name, self._pid, describe_exit(self._returncode))

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop on purpose: the stop signal to its group, SIGKILL after ``timeout`` s, reap.

        Idempotent; returns the exit code (None if unknown, see ``returncode``).
        """
        return self._terminate(timeout)

    def _terminate(self, timeout: float) -> int | None:
        with self._lock:
            if not self._running or self.wait_exit(0):
                return self._returncode
            self._send(self._stop_signal)
        if not self.wait_exit(timeout):
            with self._lock:
                if self._running:
                    logger.warning(
                        "%s ignored its stop signal for %g s: killing", self.name, timeout
                    )
                    self._send(int(getattr(signal, "SIGKILL", 9)))
            if not self.wait_exit(KILL_WAIT):
                logger.error("%s (pid %s) survives SIGKILL", self.name, self._pid)
                return None
        return self._returncode

    def _send(self, sig: int) -> None:
        """Signal the running process (lock held, so it is unreaped or alive)."""
        assert self._pid is not None
        if _WINDOWS:
            assert self._proc is not None
            if sig == signal.SIGTERM or sig == getattr(signal, "SIGINT", None):
                try:
                    os.kill(self._pid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
                    return
                except OSError:  # no console shared with the child
                    pass
            self._proc.kill()
            return
        signal_group(self._pid, sig, leader_is_ours=not self._adopted)


# --- leftovers of an earlier run of the app ----------------------------------------------------


def adopt(
    pid: int,
    version: str,
    port: int,
    *,
    exe: Path,
    log_path: Path,
    command: Sequence[str] = DEFAULT_COMMAND,
    host: str = "127.0.0.1",
    path: str = "/version",
    expect: str | None = None,
    timeout: float = 2.0,
) -> Child | None:
    """Take over a child that survived an app restart, or None if ``pid`` is not it.

    It must be alive, have ``exe`` on its command line and answer health on ``port``. An
    adopted child can be watched, stopped and restarted; its exit code is never known.
    Windows: always None.
    """
    if not _POSIX or not pid_running(pid) or not cmdline_mentions(pid, exe):
        return None
    child = Child(exe, version, command=command, port=port, log_path=log_path, host=host)
    child._adopt(pid)
    try:
        child.wait_healthy(path=path, expect=expect, timeout=timeout)
    except ChildError as exc:
        logger.info("not adopting pid %d: %s", pid, exc)
        return None
    return child
