"""Loopback control endpoint: how the CLI and a second launch talk to the running app.

The server binds 127.0.0.1 on a free port and writes ``control.json`` (port, pid, token)
into the data folder, readable by the user only. Commands need the token as a bearer
header; ``/metrics`` is open on loopback so Prometheus can scrape it without secrets.

Binding loopback is not enough against a web page in the user's browser: with DNS
rebinding, ``evil.example`` can resolve to 127.0.0.1 and its scripts read our answers. So
every request must name a loopback host in ``Host`` (else 421), and a browser ``Origin``
that is not loopback is refused (403); both answers carry no body.

Any local process can connect, token or not, so connections are bounded: each request must
arrive whole within ``REQUEST_SECONDS``, and beyond ``MAX_CONNECTIONS`` at once a connection
is answered 503 without being read (see http_server.py). Without that, about a thousand
silent connections used up the app's file descriptors and the proxy stopped serving.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from trayupdater import preferences
from trayupdater.errors import TrayUpdaterError
from trayupdater.http_server import DeadlineRequestHandler, ThreadingServer
from trayupdater.instance_lock import held_by_anyone
from trayupdater.numbers import ascii_int
from trayupdater.processes import pid_running
from trayupdater.shown import keep_secret
from trayupdater.status import Command, Status
from trayupdater.store import atomic_write_text

log = logging.getLogger(__name__)

CONTROL_FILE = "control.json"
COMMAND_PATHS = {
    "/check": Command.CHECK,
    "/rollback": Command.ROLLBACK,
    "/resume": Command.RESUME,
    "/quit": Command.QUIT,
    "/skip": Command.SKIP,
    "/allow": Command.ALLOW,
    "/pause": Command.PAUSE,
    "/unpause": Command.UNPAUSE,
}
ACTIVATE_PATH = "/activate"  # a second launch: the running app tells the user where it is
REQUEST_SECONDS = 10.0  # for a request to arrive whole (the CLI sends one at once)
MAX_CONNECTIONS = 32  # served at once: the CLI, a scraper and a second launch need a few
MAX_QUERY_FIELDS = 8
MAX_BODY = 1 << 20  # bytes of a request body read (and dropped) to keep the connection open


class ControlServer:
    def __init__(
        self,
        data_dir: Path,
        *,
        status: Callable[[], Status],
        request: Callable[[Command, float, object], Status],
        send: Callable[[Command, object], None],
        metrics: Callable[[], tuple[bytes, str]] | None = None,
        activate: Callable[[], None] | None = None,
        request_seconds: float = REQUEST_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.data_dir = data_dir
        self.token = secrets.token_urlsafe(32)
        keep_secret(self.token)  # a user may put it in a URL: the request line is logged
        handler = type(
            "Handler",
            (_Handler,),
            {
                "server_ref": self,
                "status_fn": staticmethod(status),
                "request_fn": staticmethod(request),
                "send_fn": staticmethod(send),
                "metrics_fn": staticmethod(metrics) if metrics else None,
                "activate_fn": staticmethod(activate) if activate else None,
                "request_seconds": request_seconds,
            },
        )
        self._server = ThreadingServer(("127.0.0.1", 0), handler, max_connections=max_connections)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def path(self) -> Path:
        return self.data_dir / CONTROL_FILE

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve, name="control", daemon=True)
        self._thread.start()
        write_private(
            self.path, json.dumps({"port": self.port, "pid": os.getpid(), "token": self.token})
        )

    def close(self) -> None:
        self._server.stop()
        self._server.server_close()
        try:
            info = json.loads(self.path.read_text())
            if info.get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (the token in it grants control of the app)."""
    old = os.umask(0o077)
    try:
        atomic_write_text(path, text)
    finally:
        os.umask(old)
    if os.name == "posix":
        os.chmod(path, 0o600)


class _Handler(DeadlineRequestHandler):
    server_ref: ControlServer
    status_fn: Callable[[], Status]
    request_fn: Callable[[Command, float, object], Status]
    send_fn: Callable[[Command, object], None]
    metrics_fn: Callable[[], tuple[bytes, str]] | None
    activate_fn: Callable[[], None] | None
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control: " + format, *args)

    def _refused(self) -> bool:
        """Answer 421/403 (no body) to a request that did not come from a loopback name."""
        # Every Host, Origin and Authorization is looked at, not only the first: with a
        # loopback Host (or Origin, or the token) first and another one after it, a request
        # passed whatever the other said. A request has one Host (RFC 9112, section 3.2).
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or not _is_loopback_host(hosts[0]):
            self._empty(421)
            return True
        if not all(_is_loopback_origin(o) for o in self.headers.get_all("Origin") or []):
            self._empty(403)
            return True
        return False

    def _empty(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _drop_body(self) -> None:
        """Read the request's body and drop it: no command takes one, but left unread it
        would be taken for the next request on this connection (a JSON body answered 400
        or 501 there, and that answer went to the client's next request). A body that
        cannot be framed (chunked, a Content-Length not one plain number, or over
        MAX_BODY) ends the connection after the answer instead. Read within the request's
        deadline, as its head is."""
        lengths = set(self.headers.get_all("Content-Length") or [])
        if "Transfer-Encoding" in self.headers or len(lengths) > 1:
            self.close_connection = True
            return
        length = ascii_int(lengths.pop()) if lengths else 0
        if length is None or length > MAX_BODY:
            self.close_connection = True
        elif len(self.rfile.read(length)) < length:
            self.close_connection = True  # the client stopped sending

    def _authorized(self) -> bool:
        given_all = self.headers.get_all("Authorization") or []
        if len(given_all) != 1:
            return False
        given = given_all[0]
        expected = f"Bearer {self.server_ref.token}"
        return hmac.compare_digest(given.encode(), expected.encode())

    def do_GET(self) -> None:
        self._drop_body()
        if self._refused():
            return
        if self.path == "/metrics" and self.metrics_fn is not None:
            body, content_type = self.metrics_fn()
            return self._send(200, body, content_type)
        if not self._authorized():
            return self._json(401, {"error": "missing or wrong token"})
        if self.path == "/status":
            return self._json(200, self.status_fn().to_json())
        self._json(404, {"error": f"unknown path {self.path}"})

    def do_POST(self) -> None:
        self._drop_body()
        if self._refused():
            return
        if not self._authorized():
            return self._json(401, {"error": "missing or wrong token"})
        url = urlsplit(self.path)
        try:
            query = parse_qs(url.query, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:  # more fields than that: no command takes so many
            why = f"the query string has more than {MAX_QUERY_FIELDS} fields"
            return self._json(400, {"error": why})
        if url.path == ACTIVATE_PATH:
            if self.activate_fn is not None:
                self.activate_fn()
            return self._json(202, self.status_fn().to_json())
        command = COMMAND_PATHS.get(url.path)
        if command is None:
            return self._json(404, {"error": f"unknown path {url.path}"})
        try:
            payload = _payload(command, query)
        except preferences.PreferenceError as exc:
            return self._json(400, {"error": str(exc)})
        wait = query.get("wait") != ["0"]
        if command is Command.QUIT or not wait:
            self.send_fn(command, payload)
            return self._json(202, self.status_fn().to_json())
        try:
            status = self.request_fn(command, 600.0, payload)
        except preferences.PreferenceError as exc:  # refused by the worker (skip the running)
            return self._json(409, {"error": str(exc)})
        except TrayUpdaterError as exc:
            return self._json(504, {"error": str(exc)})
        self._json(200, status.to_json())

    def _json(self, code: int, data: dict[str, Any]) -> None:
        self._send(code, json.dumps(data).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:  # tell the client not to send another request
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def _payload(command: Command, query: dict[str, list[str]]) -> object:
    """The checked argument of a command from the query string (hostile until checked)."""
    if command in (Command.SKIP, Command.ALLOW):
        return preferences.check_version((query.get("version") or [None])[0])
    if command is Command.PAUSE:
        seconds = (query.get("seconds") or [None])[0]
        if seconds is None:
            return None
        try:
            return preferences.check_pause(float(seconds))
        except ValueError:
            raise preferences.PreferenceError(
                f"seconds must be a number, got {seconds!r}"
            ) from None
    return None


def _is_loopback_name(host: str) -> bool:
    host = host.strip().lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_loopback_host(value: str | None) -> bool:
    """Is a Host header a loopback name (with an optional port)?"""
    if not value:
        return False
    host = value.strip()
    if host.startswith("["):  # [::1] or [::1]:port, and nothing else after the bracket
        host, bracket, port = host[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and _is_port(port[1:]))):
            return False
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
        if not _is_port(port):
            return False
    return _is_loopback_name(host)


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit()  # "²".isdigit() is True


def _is_loopback_origin(value: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    return parts.scheme in ("http", "https") and _is_loopback_name(parts.hostname or "")


def _stale(data_dir: Path, pid: int) -> bool:
    """Is control.json surely left over from an app that is gone (killed, crashed)?

    Its process has exited, or nobody holds the data folder's instance lock (the pid may
    have been reused). Asking the port instead sent the token to whatever program had it
    since, and took that program's 200 for "already running": the app refused to start."""
    return not pid_running(pid) or held_by_anyone(data_dir) is False


class ControlBusyError(TrayUpdaterError):
    """The app answered 503: more control connections are open than it serves at once."""


@dataclass
class ControlClient:
    """Finds the running app through its control.json and sends it commands."""

    port: int
    token: str
    pid: int

    @classmethod
    def find(cls, data_dir: Path) -> ControlClient | None:
        """The running instance for this data folder, or None if none answers."""
        try:
            info = json.loads((data_dir / CONTROL_FILE).read_text())
            client = cls(int(info["port"]), str(info["token"]), int(info["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if _stale(data_dir, client.pid):
            return None  # never send the token to whatever listens on that port now
        try:
            client.status()
        except ControlBusyError:
            return client  # it runs, but all its control connections are taken right now
        except TrayUpdaterError:
            return None  # a stale file from a crashed run
        return client

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status", timeout=5.0)

    def command(
        self,
        command: Command,
        *,
        wait: bool = True,
        timeout: float = 600.0,
        **params: str,
    ) -> dict[str, Any]:
        query = {**params, **({} if wait else {"wait": "0"})}
        path = "/" + command.value + (f"?{urlencode(query)}" if query else "")
        return self._call("POST", path, timeout=timeout)

    def activate(self) -> None:
        """Ask the running app to show where it is (a second launch); older apps ignore it."""
        with contextlib.suppress(TrayUpdaterError):
            self._call("POST", ACTIVATE_PATH, timeout=5.0)

    def _call(self, method: str, path: str, *, timeout: float) -> dict[str, Any]:
        try:
            response = requests.request(
                method, self._url(path), headers=self._headers(), timeout=(2.0, timeout)
            )
        except requests.RequestException as exc:
            raise TrayUpdaterError(
                f"the running app did not answer: {type(exc).__name__}"
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = {"error": response.text[:200]}
        if response.status_code >= 400:
            error = ControlBusyError if response.status_code == 503 else TrayUpdaterError
            raise error(f"the running app answered {response.status_code}: {data.get('error', '')}")
        return data
