"""``trayupdater run --headless`` as the benchmark sees it: a real app with a real child.

A local release feed (:class:`trayupdater.feed.ReleaseFeed`, GitHub's API shape) publishes
goreleaser-style archives whose program is the Go backend of ``backend_server.py`` (or the
Python one in a small launcher script without Go). The app installs it, starts it as its
child, health-checks it (``/version``) and serves it through its proxy, with its metrics on,
exactly as a user runs it. :meth:`App.update` publishes a newer version and runs
``trayupdater check``: the whole update flow (download, verify, start, soak, switch, drain,
probation, stop the old child).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REPO = "bench/simple-server"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from backend_server import go_binary  # noqa: E402

from trayupdater.demo import asset_name  # noqa: E402
from trayupdater.feed import ReleaseFeed  # noqa: E402
from trayupdater.platforms import Platform  # noqa: E402

_PY_LAUNCHER = """#!{python}
import os, sys
os.execv({python!r}, [{python!r}, {script!r}, "--port", sys.argv[1], "--label", sys.argv[2],
         "--impl", "python"])
"""


def _program(impl: str) -> tuple[bytes, str]:
    """The child program's bytes (Go binary, or a launcher script) and which it is."""
    if impl in ("auto", "go"):
        exe = go_binary()
        if exe is not None:
            return exe.read_bytes(), "go"
        if impl == "go":
            raise SystemExit("Go backend requested but `go` is not available")
    script = _PY_LAUNCHER.format(python=sys.executable, script=str(HERE / "backend_server.py"))
    return script.encode(), "python"


def _archive(program: bytes) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("simple-server")
        info.size, info.mode, info.mtime = len(program), 0o755, int(time.time())
        archive.addfile(info, io.BytesIO(program))
    return asset_name(Platform.current()), buffer.getvalue()


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, body
    except (OSError, http.client.HTTPException):
        return None


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class App:
    """The headless app on ``port`` with the bench backend as its child, version 1.0.0."""

    def __init__(self, port: int, impl: str = "auto", *, python: str = sys.executable) -> None:
        self.port = port
        self.base = Path(tempfile.mkdtemp(prefix="speed-app-"))
        program, self.impl = _program(impl)
        self._asset = _archive(program)
        self.feed = ReleaseFeed().start()
        self.version = "1.0.0"
        self._publish(self.version)
        (self.base / "none.toml").write_text("")
        self.args = [
            "--api-url",
            self.feed.url,
            "--repo",
            REPO,
            "--data-dir",
            str(self.base / "data"),
            "--port",
            str(port),
            "--config",
            str(self.base / "none.toml"),
        ]
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "XDG_CONFIG_HOME": str(self.base / "xdg"),  # never touch the user's autostart
            "TRAYUPDATER_START_AT_LOGIN": "false",
            "TRAYUPDATER_COMMAND": "{exe} {port} {version}",
            "TRAYUPDATER_MIN_READY_SECONDS": "0.3",
            "TRAYUPDATER_PROBATION_SECONDS": "1",
            "TRAYUPDATER_CHECK_INTERVAL": "3600",
        }
        self.python = python
        self.proc = subprocess.Popen(
            [python, "-m", "trayupdater", *self.args, "run", "--headless"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.env,
        )
        self._wait_serving(self.version, 60)

    def _publish(self, version: str) -> None:
        name, data = self._asset
        self.feed.publish(REPO, f"v{version}", {name: data})

    def _wait_serving(self, version: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the app exited with {self.proc.returncode}")
            answer = get(self.port, "/version")
            if answer == (200, version.encode()):
                return
            time.sleep(0.1)
        raise SystemExit(f"the app did not serve {version} within {timeout:g} s")

    @property
    def child_port(self) -> int:
        state = json.loads((self.base / "data" / "state.json").read_text())
        return int(state["child_port"])

    def cpu(self) -> float:
        return process_cpu(self.proc.pid)

    def rss_mib(self) -> float:
        return process_rss_mib(self.proc.pid)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.python, "-m", "trayupdater", *self.args, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def update(self, version: str) -> float:
        """Publish ``version``, run ``trayupdater check``; seconds until it is served."""
        started = time.monotonic()
        self._publish(version)
        result = self.cli("check")
        if result.returncode != 0:
            raise SystemExit(f"check failed: {result.stdout}{result.stderr}")
        self._wait_serving(version, 30)
        self.version = version
        return time.monotonic() - started

    def metrics(self) -> str:
        control = json.loads((self.base / "data" / "control.json").read_text())
        answer = get(int(control["port"]), "/metrics")
        return answer[1].decode() if answer else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.feed.close()
        shutil.rmtree(self.base, ignore_errors=True)
