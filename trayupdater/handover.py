"""The self-update handover: the new process borrows the running one's listening socket.

One JSON object per line over loopback, authenticated by a token passed in the
successor's environment (``TRAYUPDATER_HANDOVER=port:token``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trayupdater
from trayupdater.errors import SelfUpdateError
from trayupdater.installation import Installation, find_installation, remove_leftovers
from trayupdater.processes import pid_running

log = logging.getLogger(__name__)

ENV_HANDOVER = "TRAYUPDATER_HANDOVER"
STOP_TIMEOUT = 15.0
_MAX_LINE = 64 * 1024
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
        """The next message; None if none came within ``timeout``; EOFError when closed."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
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
        """After "ready": once the predecessor has committed and exited, tidy its leftovers."""
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
    if not port_text.isdigit() or not token:
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
