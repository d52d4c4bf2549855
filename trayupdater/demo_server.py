#!/usr/bin/env python3
"""A tiny stand-in for jischr/simple-server, used as the child in tests and demos.

Standalone on purpose (standard library only, no trayupdater imports): the archive builder
copies this file into release archives as the "server program" of a fake release.

Usage: ``python demo_server.py PORT [HOST]`` binds HOST (default 127.0.0.1) on PORT.

Endpoints (HTTP/1.1 keep-alive, Content-Length always set):
  GET /version   the version text, nothing else (like simple-server)
  GET /          a small text page naming the version
  GET /health    200 "ok";  GET /status  200 "Server is running" (simple-server's name)
  GET /info      JSON: version, pid, port, grandchild_pid (for tests)
  GET /slow?seconds=N    the version, after N seconds (at most 120): a long poll
  GET /stream?seconds=N  a chunked response that takes N seconds (at most 120): N dots,
                 one a second, then the version (like a server-sent event stream)

Knobs. Two module-level lines are meant to be rewritten by text substitution (see
render_script): the line starting with ``VERSION =`` (the version text) and the line starting
with ``BEHAVIOUR =`` (a dict literal of misbehaviour switches, empty for a good server). A
"broken v1.3.0" is this file with those two lines replaced, e.g. the BEHAVIOUR line becoming
``BEHAVIOUR = {"CRASH_AT_START": True}``. Environment variables override both: DEMO_VERSION,
and DEMO_<KNOB> for each knob (e.g. DEMO_CRASH_AFTER_SECONDS=2).

  CRASH_AT_START       true -> print a line and exit with code 3 before binding
                       (an int other than 0/1 is used as the exit code instead)
  CRASH_AFTER_SECONDS  serve normally, then exit with code 4 after this many seconds
  WRONG_VERSION        GET /version answers this text instead of the version
  SLOW_START_SECONDS   sleep this long before binding the port
  IGNORE_SIGTERM       true -> ignore SIGTERM (tests of the SIGKILL escalation)
  SPAWN_GRANDCHILD     true -> start a sleeping grandchild that ignores SIGTERM (tests of
                       process-group cleanup); its pid is in GET /info

SIGTERM and SIGINT (SIGBREAK on Windows) shut the server down cleanly with exit code 0.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

# The next two lines are rewritten whole by render_script and the archive builder: keep each
# on one line, starting at column 0.
VERSION = "0.0.0"
BEHAVIOUR = {}

# Knob name -> type of its value; also the list render_script validates against.
KNOBS: dict[str, type] = {
    "CRASH_AT_START": int,
    "CRASH_AFTER_SECONDS": float,
    "WRONG_VERSION": str,
    "SLOW_START_SECONDS": float,
    "IGNORE_SIGTERM": bool,
    "SPAWN_GRANDCHILD": bool,
}

_GRANDCHILD_CODE = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    "print('ready', flush=True); time.sleep(3600)"
)


def _knob(name: str) -> object:
    """The knob's value: env DEMO_<NAME> wins over the BEHAVIOUR line; None when unset."""
    raw = os.environ.get(f"DEMO_{name}")
    if raw is None:
        return BEHAVIOUR.get(name)
    kind = KNOBS[name]
    if kind is str:
        return raw
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind is int:  # CRASH_AT_START: a flag or an exit code
        text = raw.strip().lower()
        if text in ("", "0", "false", "no", "off"):
            return False
        return True if text in ("1", "true", "yes", "on") else int(text)
    return float(raw)


def _version() -> str:
    return os.environ.get("DEMO_VERSION", VERSION)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a Go server
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    grandchild_pid: int | None = None

    def version_string(self) -> str:
        return f"demo-server/{_version()}"

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        version = _version()
        text = "text/plain; charset=utf-8"
        if path == "/version":
            wrong = _knob("WRONG_VERSION")
            self._answer(200, str(wrong if wrong is not None else version).encode(), text)
        elif path == "/":
            page = f"demo-server {version}\nserving on port {self.server.server_address[1]}\n"
            self._answer(200, page.encode(), text)
        elif path == "/health":
            self._answer(200, b"ok", text)
        elif path == "/status":
            self._answer(200, b"Server is running\n", text)
        elif path == "/slow":
            time.sleep(_seconds_asked(self.path))
            self._answer(200, str(version).encode(), text)
        elif path == "/stream":
            self._stream(int(_seconds_asked(self.path)), str(version).encode())
        elif path == "/info":
            info = {
                "version": version,
                "pid": os.getpid(),
                "port": self.server.server_address[1],
                "grandchild_pid": self.grandchild_pid,
            }
            self._answer(200, json.dumps(info).encode(), "application/json")
        else:
            self._answer(404, b"not found\n", text)

    do_HEAD = do_GET

    def _stream(self, seconds: int, last: bytes) -> None:
        """Chunked, as event streams are: a dot a second, then ``last``."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        for _ in range(seconds):
            time.sleep(1.0)
            self.wfile.write(b"1\r\n.\r\n")
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(last), last))

    def log_message(self, format: str, *args: object) -> None:
        # One line per request would flood the child log under load; stay quiet.
        pass


def _seconds_asked(target: str) -> float:
    """``seconds`` from the query, within 0..120 (0 if absent or not a number)."""
    query = target.partition("?")[2]
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name == "seconds":
            try:
                seconds = float(value)
            except ValueError:
                return 0.0
            return min(max(seconds, 0.0), 120.0) if seconds == seconds else 0.0
    return 0.0


def _say(message: str) -> None:
    print(f"demo-server {_version()}: {message}", flush=True)


def serve(port: int, host: str = "127.0.0.1") -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    crash = _knob("CRASH_AT_START")
    if crash:
        _say("crashing at start as configured")
        return 3 if crash is True or crash == 1 else int(crash)  # type: ignore[call-overload]
    slow = _knob("SLOW_START_SECONDS")
    if slow:
        _say(f"slow start: sleeping {slow} s before binding")
        time.sleep(float(slow))  # type: ignore[arg-type]

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024  # listen backlog: the default of 5 stalls bursts of clients
        daemon_threads = True  # idle keep-alive connections must not block exit

        def handle_error(self, request: object, client_address: object) -> None:
            # A client resetting its connection (the proxy cutting one at a switch, a test)
            # is normal: not a traceback in the child's log, as socketserver would print.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)  # type: ignore[arg-type]

    server = Server((host, port), _Handler)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _say(f"signal {signum}: shutting down")
        # shutdown() waits for serve_forever(), which runs on this (main) thread: not here.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, on_signal)
    if _knob("IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, on_signal)
    if hasattr(signal, "SIGBREAK"):  # Windows: CTRL_BREAK_EVENT from the supervising app
        signal.signal(signal.SIGBREAK, on_signal)

    if _knob("SPAWN_GRANDCHILD"):
        grandchild = subprocess.Popen(
            [sys.executable, "-c", _GRANDCHILD_CODE], stdout=subprocess.PIPE, text=True
        )
        assert grandchild.stdout is not None
        grandchild.stdout.readline()  # it ignores SIGTERM from here on: tests rely on that
        grandchild.stdout.close()
        _Handler.grandchild_pid = grandchild.pid
        _say(f"grandchild pid {grandchild.pid}")

    crash_after = _knob("CRASH_AFTER_SECONDS")
    if crash_after is not None:

        def crash_now() -> None:
            _say("crashing as configured")
            os._exit(4)

        timer = threading.Timer(float(crash_after), crash_now)  # type: ignore[arg-type]
        timer.daemon = True
        timer.start()

    _say(f"listening on http://{host}:{server.server_address[1]}")
    try:
        server.serve_forever(poll_interval=0.1)  # shutdown() is noticed within 0.1 s
    finally:
        server.server_close()
    _say("shut down cleanly")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        port = int(args[0]) if args else 9000  # simple-server's default
        if not 0 <= port <= 65535:
            raise ValueError(port)
    except ValueError:
        print(f"usage: demo_server.py PORT [HOST] (bad port {args[0]!r})", file=sys.stderr)
        return 2
    host = args[1] if len(args) > 1 else "127.0.0.1"
    return serve(port, host)


def render_script(
    version: str, behaviour: Mapping[str, object] | None = None, python: str = sys.executable
) -> str:
    """This file's source with the version and behaviour lines replaced, shebang ``#!python``.

    Write the result to a file and make it executable to get a child program.
    Raises ValueError for a version that cannot be a line of text or an unknown knob.
    """
    if not version or any(c in version for c in "\r\n"):
        raise ValueError(f"version must be one non-empty line of text, got {version!r}")
    wanted = dict(behaviour or {})
    unknown = sorted(set(wanted) - set(KNOBS))
    if unknown:
        raise ValueError(f"unknown demo-server knob(s) {unknown}; known: {sorted(KNOBS)}")
    for name, value in wanted.items():
        if not isinstance(value, (bool, int, float, str)):
            raise ValueError(f"knob {name} must be a bool, number or string, got {value!r}")
    if any(c in python for c in " \t\r\n"):
        # The kernel splits a shebang line at the first blank: the script would not run.
        raise ValueError(f"interpreter path {python!r} contains whitespace; unusable in #!")

    try:
        source = Path(__file__).read_text(encoding="utf-8")
    except OSError:
        # A frozen build has no source files: the archive then carries only the two lines,
        # which the app's hidden `demo-child SCRIPT PORT` command reads (see serve_script).
        return (
            "# demo child of trayupdater; run as: trayupdater demo-child THIS_FILE PORT\n"
            f"VERSION = {version!r}\nBEHAVIOUR = {wanted!r}\n"
        )
    # Callables as replacements: a version or knob text with a backslash must stay literal.
    source, n_version = re.subn(
        r"^VERSION = .*$", lambda _m: f"VERSION = {version!r}", source, count=1, flags=re.M
    )
    source, n_behaviour = re.subn(
        r"^BEHAVIOUR = .*$", lambda _m: f"BEHAVIOUR = {wanted!r}", source, count=1, flags=re.M
    )
    if n_version != 1 or n_behaviour != 1:
        raise RuntimeError(f"{__file__}: the VERSION / BEHAVIOUR lines to rewrite are missing")
    if source.startswith("#!"):
        source = source.split("\n", 1)[1]
    return f"#!{python}\n{source}"


MAX_SCRIPT_BYTES = 256 * 1024


def read_script(path: Path) -> tuple[str, dict[str, object]]:
    """The VERSION and BEHAVIOUR a demo child script (full or frozen form) declares.

    Parsed as literals, never executed: the file came out of a downloaded archive.
    """
    with path.open("rb") as fh:
        text = fh.read(MAX_SCRIPT_BYTES).decode("utf-8", errors="replace")
    version_line = re.search(r"^VERSION = (.*)$", text, re.M)
    behaviour_line = re.search(r"^BEHAVIOUR = (.*)$", text, re.M)
    if not version_line or not behaviour_line:
        raise ValueError(f"{path} is not a demo child script (no VERSION/BEHAVIOUR lines)")
    version = ast.literal_eval(version_line.group(1))
    behaviour = ast.literal_eval(behaviour_line.group(1))
    if not isinstance(version, str) or not isinstance(behaviour, dict):
        raise ValueError(f"{path}: VERSION must be a string and BEHAVIOUR a dict")
    unknown = sorted(set(behaviour) - set(KNOBS))
    if unknown:
        raise ValueError(f"{path}: unknown demo-server knob(s) {unknown}")
    return version, behaviour


def serve_script(path: Path, port: int, host: str = "127.0.0.1") -> int:
    """Serve as the demo child ``path`` describes: how a frozen app runs its demo child."""
    global VERSION, BEHAVIOUR
    VERSION, BEHAVIOUR = read_script(path)
    return serve(port, host)


if __name__ == "__main__":
    sys.exit(main())
