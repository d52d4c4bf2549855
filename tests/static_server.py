"""A real static web server on loopback serving a folder: nginx, or ``http.server`` without it.

What a publisher uploads to a static host is served exactly as it lies on disk, so a test
stages an attack by editing files in the folder. Every request is logged (method, path,
status, the ``If-None-Match`` sent) and readable with :meth:`StaticServer.hits`.

nginx is started from a config generated in the test's own folder: a free loopback port,
``daemon off``, pid, logs and temp paths beside it (``user root`` when run as root, since
pytest's folders are private to their owner). ``extra`` adds nginx ``location`` blocks, for
tests that need a redirect; they are skipped on the ``http.server`` fallback.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from trayupdater.children import free_port

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    status: int
    if_none_match: str = ""
    bytes: int = 0  # body bytes sent


class StaticServer:
    def __init__(self, root: Path, work: Path, *, extra: str = "", prefer_nginx: bool = True):
        self.root = root
        self.work = work
        self.extra = extra
        work.mkdir(parents=True, exist_ok=True)
        self.kind = "nginx" if NGINX and prefer_nginx else "http.server"
        if extra and self.kind != "nginx":
            pytest.skip("this test needs nginx (redirect rules); it is not installed")
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = work / ("access.log" if self.kind == "nginx" else "http-server.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> StaticServer:
        for _attempt in range(3):  # a free port can be taken before the server binds it
            self.port = free_port()
            self.proc = self._spawn()
            if self._wait_ready():
                return self
            self.stop()
        raise AssertionError(f"{self.kind} did not start: {self._error_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def hits(self, path: str | None = None) -> list[Hit]:
        """Requests served so far (of ``path``). The server logs a request just *after*
        answering it, so the log is read once it has been still for a moment."""
        text = self._settled_log()
        parse = _nginx_hit if self.kind == "nginx" else _http_server_hit
        found = [hit for line in text.splitlines() if (hit := parse(line)) is not None]
        return [h for h in found if path is None or h.path == path]

    def __enter__(self) -> StaticServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals ---

    def _settled_log(self, still: float = 0.05, limit: float = 2.0) -> str:
        deadline = time.monotonic() + limit
        last = None
        while True:
            try:
                size = self._log.stat().st_size
            except FileNotFoundError:
                size = -1
            if size == last or time.monotonic() > deadline:
                break
            last = size
            time.sleep(still)
        try:
            return self._log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _spawn(self) -> subprocess.Popen[bytes]:
        if self.kind == "nginx":
            assert NGINX is not None
            conf = self.work / "nginx.conf"
            conf.write_text(self._nginx_conf())
            return subprocess.Popen(
                [NGINX, "-p", str(self.work), "-c", str(conf), "-e", str(self.work / "error.log")],
                stdout=subprocess.DEVNULL,
                stderr=(self.work / "nginx.stderr").open("wb"),
            )
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
                str(self.root),
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log.open("wb"),
        )

    def _nginx_conf(self) -> str:
        w = self.work
        user = "user root;\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        temps = "\n".join(
            f"    {name}_temp_path {w / ('tmp-' + name)};"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""{user}daemon off;
worker_processes 1;
pid {w / "nginx.pid"};
error_log {w / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    log_format hits '$request_method $uri $status "$http_if_none_match" $body_bytes_sent';
    access_log {w / "access.log"} hits;
{temps}
    types {{ application/json json; application/gzip gz; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
{self.extra}
        location / {{ }}
    }}
}}
"""

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def _error_text(self) -> str:
        texts = []
        for name in ("error.log", "nginx.stderr", "http-server.log"):
            path = self.work / name
            if path.exists():
                texts.append(path.read_text(errors="replace")[-2000:])
        return " | ".join(texts) or "no output"


_NGINX_LINE = re.compile(r'^(\w+) (\S+) (\d{3}) "([^"]*)" (\d+)$')
_HTTP_SERVER_LINE = re.compile(r'"(\w+) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-)')


def _nginx_hit(line: str) -> Hit | None:
    match = _NGINX_LINE.match(line.strip())
    if not match:
        return None
    etag = "" if match.group(4) == "-" else match.group(4).replace("\\x22", '"')
    return Hit(match.group(1), match.group(2), int(match.group(3)), etag, int(match.group(5)))


def _http_server_hit(line: str) -> Hit | None:
    match = _HTTP_SERVER_LINE.search(line)
    if not match:
        return None
    size = int(match.group(4)) if match.group(4).isdigit() else 0
    return Hit(match.group(1), match.group(2).split("?", 1)[0], int(match.group(3)), "", size)
