"""The self-update handover: the new process borrows the running one's listening socket.

Both sides of the protocol live here; the files (staging, the swap, state.json) are
:mod:`selfupdate`'s.

1. The **predecessor** (:class:`Predecessor`), with the new executable already in place,
   listens on a loopback port of its own and starts the new executable with
   ``TRAYUPDATER_HANDOVER=port:token`` in its environment.
2. The **successor** (:func:`take_handover`) removes the variable (it must not reach the
   child servers), connects back and sends ``{"token", "pid", "version"}``, one JSON object
   per line. A wrong token is ignored; a wrong version fails the handover.
3. The predecessor grants its *listening socket*: the inherited fd (POSIX, passed with
   ``pass_fds``) or ``socket.share`` bytes for that pid (Windows). Both processes then
   accept on the one socket: connections queue in the kernel, none is refused.
4. The successor starts its own child and, once it serves (:meth:`Successor.serve_when_ready`),
   reports ``{"ready": true}``, or ``{"failed": why}``.
5. Ready within the timeout: the predecessor sends ``{"commit": true}``, stops accepting,
   finishes its requests, watches the successor on probation (:mod:`probation_watch`) and
   exits, which closes the channel; only then does the successor remove the leftovers
   beside the executable (``.old`` stays for the probation's rollback). Anything else (it
   exited, failed, hung up, lied about its version or stayed silent): the predecessor
   stops it (:func:`stop_successor`) and raises :class:`HandoverFailed`, and the caller
   puts the old files back.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trayupdater
from trayupdater.errors import SelfUpdateError
from trayupdater.installation import Installation, find_installation, remove_leftovers
from trayupdater.numbers import ascii_int
from trayupdater.processes import pid_running
from trayupdater.release_model import parse_version

log = logging.getLogger(__name__)

ENV_HANDOVER = "TRAYUPDATER_HANDOVER"
STOP_TIMEOUT = 15.0
_MAX_LINE = 64 * 1024
HELLO_SECONDS = 5.0  # a caller on the handover port that says nothing this long is dropped
MAX_CALLERS = 16  # callers read at once; the longest waiting is dropped for a new one
READY_PHASES = ("running", "no_version")  # Status.phase values in which the app serves

# Set by take_handover(): this process is a successor on trial, so what its predecessor
# keeps for a rollback (``.old``) must stay until the predecessor has committed.
_started_by_handover = False


# --- the handover channel: one JSON object per line over loopback --------------------------------


class _Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    def send(self, message: Mapping[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def recv(self, timeout: float) -> dict[str, Any] | None:
        """The next message; None if none came within ``timeout`` (0: none has come whole
        yet); EOFError when closed."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = max(0.0, deadline - time.monotonic())  # 0: only what has come
            if not select.select([self.sock], [], [], remaining)[0]:
                return None
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("handover channel closed")
            self._buf += chunk
            if len(self._buf) > _MAX_LINE:
                raise EOFError("handover message too long")
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            raise EOFError("handover message is not JSON") from None
        if not isinstance(message, dict):
            raise EOFError("handover message is not an object")
        return message

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _grant(listener: socket.socket, os_name: str, pid: int, share: Callable[..., bytes]) -> dict:
    """How the successor gets our listening socket: its inherited fd, or WSA share bytes."""
    if os_name == "windows":
        return {"share": base64.b64encode(share(listener, pid)).decode()}
    return {"fd": listener.fileno()}


def _socket_from_grant(
    grant: Mapping[str, Any], fromshare: Callable[[bytes], socket.socket]
) -> socket.socket:
    if "fd" in grant:
        fd = int(grant["fd"])
        os.set_inheritable(fd, False)  # ours now; it must not leak into our children
        return socket.socket(fileno=fd)
    if "share" in grant:
        return fromshare(base64.b64decode(grant["share"]))
    raise SelfUpdateError(f"handover: the predecessor sent no socket ({sorted(grant)})")


# --- the predecessor's side ----------------------------------------------------------------------


class HandoverFailed(Exception):
    """The successor did not take over (it is stopped by then); the message says why."""


class Predecessor:
    """The running process's side: start the executable now installed, lend it our
    listening socket and wait for its "ready". The swap of the files and what to do when
    it fails are the caller's (:mod:`selfupdate`)."""

    def __init__(
        self,
        installation: Installation,
        argv: Sequence[str],
        *,
        environ: Mapping[str, str] | None = None,
        ready_timeout: float,
        share: Callable[..., bytes] | None = None,
        popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
    ) -> None:
        self._installation = installation
        self._argv = list(argv)
        self._environ = environ  # None: this process's environment when the successor starts
        self._ready_timeout = ready_timeout
        self._share = share or (lambda sock, pid: sock.share(pid))
        self._popen = popen

    def hand_to(
        self, listener: socket.socket, version: str
    ) -> tuple[subprocess.Popen[bytes], _Channel]:
        """Start the successor and wait until it serves on ``listener``: its process and the
        channel to commit over. HandoverFailed when it does not; then, as on any other
        exception, it is stopped first."""
        token = secrets.token_urlsafe(24)
        proc: subprocess.Popen[bytes] | None = None
        try:
            with socket.create_server(("127.0.0.1", 0)) as server:
                proc = self._spawn(listener, server.getsockname()[1], token)
                return proc, self._await_ready(server, proc, token, version, listener)
        except BaseException:
            if proc is not None:
                stop_successor(proc, self._installation.os)
            raise

    def relaunch(self) -> subprocess.Popen[bytes] | None:
        """Start the executable now installed as a normal launch, with no handover: the
        successor crashed on probation, the old build is back in place and did not take
        the socket over. None (logged) if it cannot start: the next login or launch starts
        it then."""
        try:
            return self._start(self._environment(), ())
        except OSError as exc:
            log.critical("cannot start %s again: %s", self._installation.executable, exc)
            return None

    def _spawn(self, listener: socket.socket, port: int, token: str) -> subprocess.Popen[bytes]:
        env = self._environment()
        env[ENV_HANDOVER] = f"{port}:{token}"
        try:
            return self._start(env, (listener.fileno(),))
        except OSError as exc:
            raise HandoverFailed(
                f"cannot start {self._installation.executable}: {exc.strerror or exc}"
            ) from None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ if self._environ is None else self._environ)
        env.pop(ENV_HANDOVER, None)
        # A fresh PyInstaller instance: unpack the new build, ignore our _PYI_* variables.
        env["PYINSTALLER_RESET_ENVIRONMENT"] = "1"
        if self._installation.os == "linux" and "LD_LIBRARY_PATH_ORIG" in env:
            env["LD_LIBRARY_PATH"] = env.pop("LD_LIBRARY_PATH_ORIG")
        elif self._installation.os == "linux":
            env.pop("LD_LIBRARY_PATH", None)  # it pointed at our unpacked libraries
        return env

    def _start(self, env: dict[str, str], pass_fds: tuple[int, ...]) -> subprocess.Popen[bytes]:
        argv = [str(self._installation.executable), *self._argv]
        kwargs: dict[str, Any] = {"env": env, "stdin": subprocess.DEVNULL}
        if self._installation.os == "windows":
            # Detached: closing the console it was started from must not end the new process.
            kwargs["creationflags"] = 0x200 | 0x8  # CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS
        else:
            # Its own session: our terminal's Ctrl-C or hang-up must not reach it.
            kwargs["start_new_session"] = True
            if pass_fds:
                kwargs["pass_fds"] = pass_fds
        log.info("self-update: starting %s", argv[0])
        return self._popen(argv, **kwargs)

    def _await_ready(
        self,
        server: socket.socket,
        proc: subprocess.Popen[bytes],
        token: str,
        version: str,
        listener: socket.socket,
    ) -> _Channel:
        deadline = time.monotonic() + self._ready_timeout
        channel, hello = self._await_hello(server, proc, token, deadline)
        if parse_version(str(hello.get("version", ""))) != parse_version(version):
            with contextlib.suppress(OSError):
                channel.send({"error": f"expected version {version}"})
            channel.close()
            raise HandoverFailed(
                f"the new build says it is {hello.get('version')!r}, not {version}"
            )
        pid = hello.get("pid")
        try:
            grant = _grant(
                listener, self._installation.os, pid if type(pid) is int else 0, self._share
            )
            channel.send({**grant, "pid": os.getpid()})
        except OSError as exc:
            channel.close()
            raise HandoverFailed(f"cannot hand over the socket: {exc}") from None
        while True:
            step = self._step(proc, deadline)
            try:
                message = channel.recv(step)
            except (EOFError, OSError) as exc:
                raise HandoverFailed(f"the new build hung up before it was ready ({exc})") from None
            if message is None:
                continue
            if message.get("ready"):
                if proc.poll() is None:
                    return channel
                raise HandoverFailed("the new build exited right after reporting ready")
            if "failed" in message:
                raise HandoverFailed(f"the new build failed to start: {message['failed']}")

    def _await_hello(
        self, server: socket.socket, proc: subprocess.Popen[bytes], token: str, deadline: float
    ) -> tuple[_Channel, dict[str, Any]]:
        """The successor's channel and hello, proven by the token. Anyone on the machine
        may connect too: every caller is read at once (one that says nothing must not make
        the real successor wait), and one silent for :data:`HELLO_SECONDS` is dropped."""
        callers: dict[socket.socket, tuple[_Channel, float]] = {}
        try:
            while True:
                step = self._step(proc, deadline)
                ready = select.select([server, *callers], [], [], step)[0]
                now = time.monotonic()
                for sock in ready:
                    if sock is server:
                        conn, _ = server.accept()
                        if len(callers) >= MAX_CALLERS:  # the longest waiting makes room
                            oldest = min(callers, key=lambda s: callers[s][1])
                            callers.pop(oldest)[0].close()
                        callers[conn] = (_Channel(conn), now)
                        continue
                    caller = callers[sock][0]
                    try:
                        hello = caller.recv(0)  # what came; None until a whole line
                    except (EOFError, OSError):
                        callers.pop(sock)[0].close()
                        continue
                    if hello is None:
                        continue
                    callers.pop(sock)
                    if hmac.compare_digest(str(hello.get("token", "")).encode(), token.encode()):
                        return caller, hello
                    caller.close()  # not our successor (or it did not say so): ignore
                for sock in [s for s, (_, since) in callers.items() if now - since > HELLO_SECONDS]:
                    callers.pop(sock)[0].close()
        finally:
            for caller, _ in callers.values():
                caller.close()

    def _step(self, proc: subprocess.Popen[bytes], deadline: float) -> float:
        """How long to wait for the next message: HandoverFailed once the successor exited
        or its time is up."""
        code = proc.poll()
        if code is not None:
            raise HandoverFailed(f"the new build exited with code {code} before it was ready")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HandoverFailed(
                f"the new build did not report ready within {self._ready_timeout:g} s"
            )
        return min(0.2, remaining)


def stop_successor(proc: subprocess.Popen[bytes], os_name: str) -> None:
    """Stop a successor that did not take over: politely, then for good."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(OSError):
        if os_name == "windows":
            proc.terminate()
        else:
            proc.send_signal(signal.SIGTERM)  # the onefile bootloader forwards it
    try:
        proc.wait(STOP_TIMEOUT)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(OSError):
        if os_name != "windows":
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the whole group
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_TIMEOUT)


# --- the successor's side ------------------------------------------------------------------------


class Successor:
    """The new process's side of a handover: the socket it got and its health report."""

    def __init__(
        self,
        channel: _Channel,
        sock: socket.socket,
        predecessor_pid: int,
        *,
        installation: Installation | None = None,
    ) -> None:
        self.socket = sock
        self.predecessor_pid = predecessor_pid
        self._channel = channel
        self._installation = installation
        self._reported = threading.Event()
        self._lock = threading.Lock()

    def report_ready(self) -> None:
        """Tell the predecessor we serve; it stops and exits. Only the first report counts."""
        if self._report({"ready": True}):
            threading.Thread(target=self._await_commit, name="handover", daemon=True).start()

    def report_failed(self, why: str) -> None:
        self._report({"failed": why})

    def serve_when_ready(
        self,
        controller: Any,
        start_serving: Callable[[], None],
        ready_phases: Sequence[str] = READY_PHASES,
    ) -> None:
        """Once ``controller`` reaches a serving phase: ``start_serving()`` (start the proxy
        on the inherited socket), then report ready; report failed if it errors instead.

        The proxy must not accept before a backend is set, or the requests it takes from
        the shared socket would get 503 while the predecessor could have served them.
        ``controller`` is the update worker (``subscribe`` + ``status``): subscribing before
        reading the current status means no change can slip between the two.
        """
        started = threading.Event()
        lock = threading.Lock()

        def on_status(status: Any) -> None:
            if self._reported.is_set():
                return  # ready or failed: either way the decision is the predecessor's now
            phase = getattr(status.phase, "value", status.phase)
            if phase in ready_phases:
                with lock:
                    if started.is_set():
                        return
                    started.set()
                try:
                    start_serving()
                except Exception as exc:
                    log.exception("handover: cannot serve on the inherited socket")
                    self.report_failed(f"cannot serve: {exc}")
                    return
                self.report_ready()
            elif phase == "error" and not started.is_set():
                self.report_failed(getattr(status, "error", None) or "error")

        controller.subscribe(on_status)
        on_status(controller.status())

    def _report(self, message: dict[str, Any]) -> bool:
        """Send the one report of this handover; False if one was sent already or it failed."""
        with self._lock:
            if self._reported.is_set():
                return False
            self._reported.set()
        try:
            self._channel.send(message)
        except OSError as exc:
            log.warning("handover: cannot report to the predecessor: %s", exc)
            return False
        return True

    def _await_commit(self) -> None:
        """After "ready": once the predecessor has committed and exited, tidy its leftovers.
        It holds the channel open through its probation, so ``.old`` is kept for a rollback
        however long that lasts: the wait for its exit starts when the channel closes."""
        committed = False
        try:
            while True:
                message = self._channel.recv(3600)
                if message is not None and message.get("commit"):
                    committed = True
        except (EOFError, OSError):
            pass
        self._channel.close()
        if not committed or self._installation is None:
            return
        _wait_gone(self.predecessor_pid, STOP_TIMEOUT * 2)
        removed = remove_leftovers(self._installation)
        if removed:
            log.info("self-update: removed %s", ", ".join(removed))


def take_handover(
    environ: dict[str, str] | None = None,
    *,
    version: str | None = None,
    timeout: float = 15.0,
    fromshare: Callable[[bytes], socket.socket] | None = None,
    installation: Installation | None = None,
) -> Successor | None:
    """In a process started by a self-update: get the predecessor's listening socket.

    None when this process was not started that way. ``environ`` is changed: the variable
    is removed so that it does not leak into the child servers.
    """
    global _started_by_handover
    environ = os.environ if environ is None else environ
    value = environ.pop(ENV_HANDOVER, None)
    if not value:
        return None
    _started_by_handover = True
    port_text, _, token = value.partition(":")
    if ascii_int(port_text, 5) is None or not token:
        raise SelfUpdateError(f"{ENV_HANDOVER} must be PORT:TOKEN, got {value[:20]!r}")
    version = version or trayupdater.__version__
    try:
        sock = socket.create_connection(("127.0.0.1", int(port_text)), timeout=timeout)
    except OSError as exc:
        raise SelfUpdateError(f"handover: cannot reach the predecessor: {exc}") from None
    sock.settimeout(None)
    channel = _Channel(sock)
    try:
        channel.send({"token": token, "pid": os.getpid(), "version": version})
        grant = channel.recv(timeout)
    except (OSError, EOFError) as exc:
        channel.close()
        raise SelfUpdateError(f"handover refused by the predecessor: {exc}") from None
    if grant is None or "error" in grant:
        channel.close()
        why = grant["error"] if grant else f"no answer within {timeout:g} s"
        raise SelfUpdateError(f"handover refused by the predecessor: {why}")
    try:
        listener = _socket_from_grant(grant, fromshare or getattr(socket, "fromshare", _no_share))
    except (OSError, ValueError, SelfUpdateError) as exc:
        channel.close()  # the predecessor sees us hang up and rolls back
        raise SelfUpdateError(f"handover: unusable socket from the predecessor: {exc}") from None
    if installation is None:
        installation = find_installation()
    log.info(
        "handover: took the listening socket %s from pid %s",
        listener.getsockname(),
        grant.get("pid"),
    )
    return Successor(channel, listener, int(grant.get("pid", 0)), installation=installation)


def _no_share(data: bytes) -> socket.socket:
    raise SelfUpdateError("socket sharing is only available on Windows")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_running(pid):
            return True
        time.sleep(0.1)
    return False


def is_successor() -> bool:
    """Was this process started by a self-update (before or after take_handover())?

    Its predecessor still runs and owns control.json: the single-instance check must not
    send this process away.
    """
    return _started_by_handover or bool(os.environ.get(ENV_HANDOVER))
