"""The frozen Linux executable end to end: it updates its child, then replaces itself.

A session fixture builds three onefile executables with build.spec (0.1.0, 0.2.0, and a
0.3.0 that exits 1 at start) unless a matching build is cached in ``dist/frozen-e2e``
(keyed by a hash of the sources) or ``TRAYUPDATER_FROZEN_DIST`` points at prebuilt ones
(``<dir>/0.1.0/trayupdater``, ``<dir>/0.2.0/trayupdater``, ``<dir>/broken/trayupdater``).
The test then runs the real thing: the frozen 0.1.0 serves a child through its proxy from
a local release feed, updates the child, replaces itself with 0.2.0 while clients keep
sending requests, and rolls back from a build that dies at start and from a file that is
not a program. Every request during all that must succeed.

The cheap tests at the end check the packaging files the other OSes' builds use.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import io
import json
import os
import plistlib
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trayupdater.children import free_port
from trayupdater.demo import DEMO_REPO, publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.platforms import Platform, pick_asset

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGING = REPO_ROOT / "packaging"
APP_REPO = "demo/trayupdater"
ASSET = "trayupdater_Linux_x86_64.tar.gz"
VARIANTS = {
    "0.1.0": {"TRAYUPDATER_BUILD_VERSION": "0.1.0"},
    "0.2.0": {"TRAYUPDATER_BUILD_VERSION": "0.2.0"},
    "broken": {"TRAYUPDATER_BUILD_VERSION": "0.3.0", "TRAYUPDATER_BUILD_BROKEN": "1"},
}
BUILD_TIMEOUT = 600.0
# This build bundles the trusted root of a TUF repository made beside it (tuf_site()).
TUF_VARIANT = "0.2.0"

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the frozen end-to-end test runs on Linux"
)


# --- building (once per session, cached across sessions by source hash) -----------------------


def _source_fingerprint() -> str:
    digest = hashlib.sha256()
    files = sorted((REPO_ROOT / "trayupdater").rglob("*.py"))
    files += [REPO_ROOT / "build.spec", PACKAGING / "pyi_rth_trayupdater.py"]
    for path in files:
        digest.update(str(path.relative_to(REPO_ROOT)).encode())
        digest.update(path.read_bytes())
    from PyInstaller import __version__ as pyinstaller_version

    digest.update(f"{sys.version} {pyinstaller_version}".encode())
    return digest.hexdigest()


def tuf_site(dist: Path) -> Path:
    """The repository and keys whose root the TUF_VARIANT build carries inside."""
    return dist / f"{TUF_VARIANT}-tuf-site"


def _make_tuf_site(dist: Path) -> Path:
    site = tuf_site(dist)
    shutil.rmtree(site, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "trayupdater", "repo", "init", str(site / "repo")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return site / "repo" / "metadata" / "root.json"


def _build(variants: dict[str, dict[str, str]], dist: Path, fingerprint: str) -> None:
    """Build the variants side by side (separate work folders); raise with the log tail."""
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name, knobs in variants.items():
        log = REPO_ROOT / "build" / "frozen-e2e" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dist / name, ignore_errors=True)
        env = {
            **os.environ,
            **knobs,
            "TRAYUPDATER_BUILD_MODE": "onefile",
            "TRAYUPDATER_BUILD_GUI": "0",  # headless e2e: no GTK (see packaging/README.md)
            # One PyInstaller cache per parallel build: they would otherwise read and write
            # the same binary-cache index at once and one reads it half-written (seen in CI).
            "PYINSTALLER_CONFIG_DIR": str(REPO_ROOT / "build" / "frozen-e2e" / f"{name}-cache"),
        }
        if name == TUF_VARIANT:
            env["TRAYUPDATER_TRUSTED_ROOT"] = str(_make_tuf_site(dist))
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "PyInstaller",
                    "--noconfirm",
                    "--log-level",
                    "WARN",
                    "--workpath",
                    str(REPO_ROOT / "build" / "frozen-e2e" / name),
                    "--distpath",
                    str(dist / name),
                    str(REPO_ROOT / "build.spec"),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs[name] = (proc, log)
    failed = []
    for name, (proc, log) in procs.items():
        try:
            code = proc.wait(BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -1
        if code != 0 or not (dist / name / "trayupdater").is_file():
            tail = log.read_text(errors="replace")[-3000:]
            failed.append(f"--- {name} (exit {code}):\n{tail}")
        else:
            (dist / name / ".fingerprint").write_text(fingerprint)
    if failed:
        raise AssertionError("PyInstaller build failed:\n" + "\n".join(failed))


@pytest.fixture(scope="session")
def frozen() -> dict[str, Path]:
    """variant name -> the onefile executable."""
    given = os.environ.get("TRAYUPDATER_FROZEN_DIST")
    if given:
        exes = {name: Path(given) / name / "trayupdater" for name in VARIANTS}
        missing = [str(p) for p in exes.values() if not p.is_file()]
        if missing:
            pytest.fail(f"TRAYUPDATER_FROZEN_DIST lacks {', '.join(missing)}")
        return exes
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.skip("PyInstaller is not installed: pip install -e '.[build]' to run this test")
    dist = REPO_ROOT / "dist" / "frozen-e2e"
    fingerprint = _source_fingerprint()
    stale = {
        name: knobs
        for name, knobs in VARIANTS.items()
        if not (dist / name / "trayupdater").is_file()
        or (dist / name / ".fingerprint").read_text() != fingerprint
        or (name == TUF_VARIANT and not (tuf_site(dist) / "repo" / "metadata").is_dir())
    }
    if stale:
        _build(stale, dist, fingerprint)
    return {name: dist / name / "trayupdater" for name in VARIANTS}


# --- running it --------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def get_version(port: int, timeout: float = 5.0) -> str | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", "/version")
        response = conn.getresponse()
        body = response.read().decode()
        conn.close()
    except (OSError, http.client.HTTPException):
        return None
    return body if response.status == 200 else None


@dataclass
class Load:
    """Clients hammering the proxy the whole time: fresh connections and keep-alive ones."""

    port: int
    expect: tuple[str, ...]
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, fresh: int = 2, keep_alive: int = 2) -> Load:
        for target, count in ((self._fresh, fresh), (self._keep_alive, keep_alive)):
            for _ in range(count):
                thread = threading.Thread(target=target, daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _record(self, outcome: str | None) -> None:
        with self._lock:
            if outcome is None:
                self.ok += 1
            else:
                now = time.time()
                stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{now % 1:.3f}"[2:]
                self.failures.append(f"{stamp} {outcome}")

    def _fresh(self) -> None:
        while not self._stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request("GET", "/version")
                response = conn.getresponse()
                body = response.read().decode()
                conn.close()
                ok = response.status == 200 and body in self.expect
                self._record(None if ok else f"fresh: {response.status} {body!r}")
            except (OSError, http.client.HTTPException) as exc:
                self._record(f"fresh: {type(exc).__name__}: {exc}")

    def _keep_alive(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request("GET", "/version")
                response = conn.getresponse()
                body = response.read().decode()
                self._record(
                    None if response.status == 200 and body in self.expect else f"ka: {body!r}"
                )
            except (OSError, http.client.HTTPException) as exc:
                self._record(f"keep-alive: {type(exc).__name__}: {exc}")
                conn = None


class FrozenApp:
    """The installed executable, started as ``run --headless`` and driven by its own CLI."""

    def __init__(self, exe: Path, feed: ReleaseFeed, root: Path) -> None:
        self.exe = exe
        self.data = root / "data"
        self.port = free_port()
        config = root / "none.toml"
        config.write_text("")
        self.args = [
            *("--api-url", feed.url, "--repo", DEMO_REPO, "--data-dir", str(self.data)),
            *("--port", str(self.port), "--config", str(config)),
            *("--set", f"self_update_repo={APP_REPO}"),
        ]
        self.env = {
            **os.environ,
            "TRAYUPDATER_PROBATION_SECONDS": "0",
            "TRAYUPDATER_CHECK_INTERVAL": "3600",  # checks happen when the test asks
        }
        self.log = root / "app.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.exe), *self.args, "run", "--headless"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self.proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.exe), *self.args, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )

    def pid(self) -> int | None:
        try:
            return int(json.loads((self.data / "control.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def state(self) -> dict:
        return json.loads((self.data / "state.json").read_text())

    def state_if_written(self) -> dict:
        """{} until the first save: the proxy switches to a first install before it is recorded."""
        try:
            return self.state()
        except FileNotFoundError:
            return {}

    def self_update(self) -> dict:
        try:
            return json.loads((self.data / "selfupdate.json").read_text())
        except (OSError, ValueError):
            return {}

    def last_result(self) -> dict:
        return self.self_update().get("last_result") or {}

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def kill_everything(self) -> None:
        pids = [self.pid()]
        with contextlib.suppress(OSError, ValueError, KeyError):
            pids.append(self.state().get("child_pid"))
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(30)


def app_release(exe: Path) -> bytes:
    """A release asset as packaging/ci/release.yml would publish a onefile Linux build."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(exe, arcname="trayupdater")
    return buffer.getvalue()


@pytest.fixture
def installed(frozen: dict[str, Path], feed: ReleaseFeed, tmp_path: Path) -> Iterator[FrozenApp]:
    exe = tmp_path / "opt" / "trayupdater"
    exe.parent.mkdir()
    shutil.copy2(frozen["0.1.0"], exe)
    app = FrozenApp(exe, feed, tmp_path)
    yield app
    app.kill_everything()


@linux_only
@pytest.mark.slow
def test_frozen_app_updates_its_child_then_replaces_itself(
    frozen: dict[str, Path], feed: ReleaseFeed, installed: FrozenApp
) -> None:
    import inspect

    from trayupdater.updater import Updater

    if "self_updater" not in inspect.signature(Updater).parameters:
        pytest.fail("trayupdater.selfupdate is not wired into app.py/updater.py/cli.py yet")
    app = installed
    assert app.cli("--version").stdout.strip() == "trayupdater 0.1.0"
    publish_version(feed, "1.0.0")
    first = app.start()
    wait_for(lambda: get_version(app.port) == "1.0.0", 90, "the frozen app serving 1.0.0")

    # 1. Headless update of the child, driven through the frozen CLI.
    publish_version(feed, "1.1.0")
    result = app.cli("check")
    assert result.returncode == 0, result.stderr + app.log_tail()
    assert "Updated to 1.1.0" in result.stdout
    assert get_version(app.port) == "1.1.0"
    old_child = app.state()["child_pid"]
    assert alive(old_child)

    # 2. Self-update to 0.2.0 while clients keep sending requests.
    load = Load(app.port, expect=("1.1.0",)).start()
    try:
        feed.publish(APP_REPO, "v0.2.0", {ASSET: app_release(frozen["0.2.0"])})
        old_pid = app.pid()
        assert app.cli("check").returncode == 0
        wait_for(lambda: app.pid() not in (None, old_pid), 120, "the 0.2.0 process taking over")
        assert first.wait(60) == 0, app.log_tail()  # the old process retired cleanly
        new_pid = app.pid()
        assert app.cli("--version").stdout.strip() == "trayupdater 0.2.0"
        # The serving process runs the file now on disk, not a deleted old inode.
        assert Path(os.readlink(f"/proc/{new_pid}/exe")) == app.exe.resolve()
        assert app.last_result()["outcome"] == "replaced"
        assert app.last_result()["previous"] == "0.1.0"
        wait_for(lambda: not alive(old_child), 30, "the old child to stop")
        assert alive(app.state()["child_pid"]) and app.state()["child_pid"] != old_child
        wait_for(
            lambda: sorted(p.name for p in app.exe.parent.iterdir()) == ["trayupdater"],
            60,
            "trayupdater.old to be removed",
        )
        status = app.cli("status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["active"] == "1.1.0"
        good = app.exe.read_bytes()

        # 3. A newer build that dies at start: rolled back, the 0.2.0 process serves on.
        feed.publish(APP_REPO, "v0.3.0", {ASSET: app_release(frozen["broken"])})
        assert app.cli("check").returncode == 0
        wait_for(lambda: app.last_result().get("version") == "0.3.0", 120, "0.3.0 attempted")
        assert app.last_result()["outcome"] == "rolled_back", app.log_tail()
        assert "exited with code 1" in app.self_update()["last_error"]

        # 4. A "build" that is not a program at all: rolled back too.
        feed.publish(APP_REPO, "v0.4.0", {"trayupdater_Linux_x86_64": b"not a program\n"})
        assert app.cli("check").returncode == 0
        wait_for(lambda: app.last_result().get("version") == "0.4.0", 120, "0.4.0 attempted")
        assert app.last_result()["outcome"] == "rolled_back", app.log_tail()
        assert app.self_update()["blocked"] == ["0.3.0", "0.4.0"]
    finally:
        load.stop()

    assert app.pid() == new_pid and alive(new_pid)
    assert app.exe.read_bytes() == good
    assert sorted(p.name for p in app.exe.parent.iterdir()) == ["trayupdater"]
    assert app.cli("status").returncode == 0  # control.json points at the live process again
    assert get_version(app.port) == "1.1.0"
    assert load.failures == [], f"{len(load.failures)} failed of {load.ok}: {load.failures[:10]}"
    assert load.ok > 200, "the load generator hardly ran"

    child = app.state()["child_pid"]
    assert app.cli("quit").returncode == 0
    wait_for(lambda: not alive(new_pid) and not alive(child), 60, "quit to stop app and child")


@linux_only
@pytest.mark.slow
def test_a_frozen_build_killed_on_probation_gives_way_to_the_old_one(
    frozen: dict[str, Path], feed: ReleaseFeed, installed: FrozenApp
) -> None:
    """The new build took over, then died (SIGKILL, as a crash): the old process, retired
    and watching it, puts the old executable back, blocks the version and starts the old
    build again, which takes over the socket it held: clients wait, none is refused."""
    app = installed
    app.env["TRAYUPDATER_PROBATION_SECONDS"] = "8"  # the child's and the app's own
    publish_version(feed, "1.0.0")
    first = app.start()
    wait_for(lambda: get_version(app.port) == "1.0.0", 90, "the frozen app serving 1.0.0")
    past_probation = lambda: (  # noqa: E731
        app.state_if_written().get("active") == "1.0.0"
        and app.state_if_written().get("probation_until") is None
    )
    wait_for(past_probation, 30, "1.0.0 past probation")
    old_bytes, old_pid = app.exe.read_bytes(), app.pid()

    feed.publish(APP_REPO, "v0.2.0", {ASSET: app_release(frozen["0.2.0"])})
    assert app.cli("check").returncode == 0
    committed = lambda: app.last_result().get("outcome") == "replaced"  # noqa: E731
    wait_for(committed, 120, "0.2.0 taking over")
    new_pid = app.pid()
    assert new_pid not in (None, old_pid)
    load = Load(app.port, expect=("1.0.0",)).start()
    time.sleep(0.5)
    os.kill(new_pid, signal.SIGKILL)  # type: ignore[arg-type]

    rolled_back = lambda: app.last_result().get("outcome") == "rolled_back"  # noqa: E731
    wait_for(rolled_back, 30, "the rollback of 0.2.0")
    assert "killed by SIGKILL" in app.last_result().get("reason", ""), app.log_tail()
    assert app.self_update()["blocked"] == ["0.2.0"]
    assert first.wait(30) == 0, app.log_tail()  # the watcher exits once it has relaunched
    assert app.exe.read_bytes() == old_bytes
    assert sorted(p.name for p in app.exe.parent.iterdir()) == ["trayupdater"]
    relaunched = lambda: app.pid() not in (None, old_pid, new_pid) and alive(app.pid())  # noqa: E731
    wait_for(relaunched, 90, "the old build started again")
    wait_for(lambda: get_version(app.port) == "1.0.0", 90, "the old build serving again")
    ok_before = load.ok
    wait_for(lambda: load.ok > ok_before + 20, 30, "the load going on")
    load.stop()
    # Only what each of the 4 clients had in flight in 0.2.0 when it died may fail.
    assert not [f for f in load.failures if "Refused" in f], load.failures
    assert len(load.failures) <= 4, load.failures
    assert app.cli("--version").stdout.strip() == "trayupdater 0.1.0"
    assert app.cli("status").returncode == 0


@linux_only
@pytest.mark.slow
def test_frozen_app_updates_from_a_tuf_repository_with_the_root_it_carries(
    frozen: dict[str, Path], tmp_path: Path
) -> None:
    """Built with TRAYUPDATER_TRUSTED_ROOT, the executable trusts that repository with no
    trusted_root setting (python-tuf and its crypto frozen in); a build without it says
    where it looked."""
    from static_server import StaticServer
    from tuf_support import Publisher

    site = tuf_site(frozen[TUF_VARIANT].parent.parent)
    if not (site / "repo" / "metadata").is_dir():
        pytest.skip(f"no TUF site beside the prebuilt {TUF_VARIANT} build ({site})")
    shutil.copytree(site, tmp_path / "site")
    publisher = Publisher(tmp_path)
    publisher.add("1.0.0")
    home = tmp_path / "home"
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "TRAYUPDATER_PROBATION_SECONDS": "0",
    }
    none = tmp_path / "none.toml"
    none.write_text("")
    port = free_port()
    with StaticServer(publisher.dir, tmp_path / "server") as server:
        args = [
            *("--config", str(none), "--data-dir", str(tmp_path / "data"), "--repo", DEMO_REPO),
            *("--port", str(port), "--set", "kind=tuf", "--set", f"url={server.url}"),
        ]
        plain = subprocess.run(
            [str(frozen["0.1.0"]), *args, "check", "--dry-run"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert plain.returncode == 1 and "no trusted root" in plain.stderr, plain.stderr
        log = (tmp_path / "app.log").open("wb")
        proc = subprocess.Popen(
            [str(frozen[TUF_VARIANT]), *args, "run", "--headless"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            wait_for(lambda: get_version(port) == "1.0.0", 90, "the frozen app serving 1.0.0")
            assert [h.status for h in server.hits("/metadata/timestamp.json")][:1] == [200]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, (tmp_path / "app.log").read_text(errors="replace")[-3000:]
            log.close()


@linux_only
@pytest.mark.slow
def test_frozen_demo_serves_and_updates(frozen: dict[str, Path], tmp_path: Path) -> None:
    """`trayupdater demo` from the executable: there is no Python to run the demo child
    script with, so the executable serves the child itself (hidden `demo-child`)."""
    port = free_port()
    (tmp_path / "none.toml").write_text("")
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(frozen["0.1.0"]),
                *("--config", str(tmp_path / "none.toml"), "--port", str(port)),
                *("--data-dir", str(tmp_path / "demo")),
                *("demo", "--headless", "--publish-after", "1", "--duration", "120"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: get_version(port) == "1.0.0", 90, "the frozen demo serving 1.0.0")
        wait_for(lambda: get_version(port) == "1.1.0", 90, "the frozen demo updating to 1.1.0")
        # The story line comes once the switch is done (a moment after 1.1.0 serves).
        wait_for(lambda: "switched to 1.1.0" in log.read_text(errors="replace"), 60, "story")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "published 1.1.0" in text, text[-3000:]
    assert "switched to 1.1.0" in text  # the story, as from source


@linux_only
def test_the_build_puts_the_desktop_file_where_the_readme_says(frozen: dict[str, Path]) -> None:
    beside = frozen["0.1.0"].parent  # onefile: dist/trayupdater and these next to it
    for name in ("trayupdater.desktop", "install.sh", "trayupdater.png"):
        assert (beside / name).is_file(), name
    assert (beside / "trayupdater.desktop").read_bytes() == (
        PACKAGING / "linux" / "trayupdater.desktop"
    ).read_bytes()


@linux_only
def test_a_gui_build_without_pygobject_fails_loudly(tmp_path: Path) -> None:
    """Without PyGObject PyInstaller used to ship a build without a tray menu silently."""
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.skip("PyInstaller is not installed: pip install -e '.[build]' to run this test")
    # A gi package that fails to import, as on a machine without PyGObject.
    shadow = tmp_path / "shadow" / "gi"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'gi'\")\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAYUPDATER_BUILD")}
    env["PYTHONPATH"] = str(tmp_path / "shadow")
    env["PYINSTALLER_CONFIG_DIR"] = str(tmp_path / "cache")
    argv = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN"]
    argv += ["--workpath", str(tmp_path / "build"), "--distpath", str(tmp_path / "dist")]
    result = subprocess.run(
        [*argv, str(REPO_ROOT / "build.spec")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "PyGObject with GTK 3 is not importable" in result.stderr + result.stdout
    assert "TRAYUPDATER_BUILD_GUI=0" in result.stderr + result.stdout
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


@linux_only
@pytest.mark.slow
def test_frozen_app_goes_through_a_proxy_and_trusts_the_system_store(
    frozen: dict[str, Path], tmp_path: Path
) -> None:
    """The frozen executable behind a company network: HTTPS_PROXY from the environment (a
    real CONNECT proxy), a company CA in the system store (truststore is frozen in, and not
    certifi's list decides), and the TLS-inspection message when the CA is not there."""
    import functools
    import ssl
    from http.server import SimpleHTTPRequestHandler

    from forward_proxy import ForwardProxy
    from tls import https_server, make_ca
    from tuf_support import Publisher

    publisher = Publisher(tmp_path).init()
    publisher.add("1.0.0")
    ca = make_ca(tmp_path / "ca", hosts=["updates.example.test"])
    system = ssl.get_default_verify_paths().openssl_cafile
    with_ca = tmp_path / "system-with-company-ca.pem"
    with_ca.write_text(Path(system).read_text() + "\n" + ca.cert.read_text())

    class Files(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    none = tmp_path / "none.toml"
    none.write_text("")
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_DIR", "NO_PROXY")
    }
    with https_server(ca, functools.partial(Files, directory=str(publisher.dir))) as base:
        port = int(base.rsplit(":", 1)[1])
        with ForwardProxy(hosts={"updates.example.test": port}) as proxy:

            def check(cert_file: Path | str, data: str) -> subprocess.CompletedProcess[str]:
                args = [
                    "--config", str(none), "--data-dir", str(tmp_path / data),
                    "--repo", DEMO_REPO, "--set", "kind=tuf",
                    "--set", f"url=https://updates.example.test:{port}/",
                    "--set", f"trusted_root={publisher.shipped_root}",
                ]  # fmt: skip
                return subprocess.run(
                    [str(frozen["0.1.0"]), *args, "check"],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    env={**env, "HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(cert_file)},
                )

            trusted = check(with_ca, "a")
            assert trusted.returncode == 0, trusted.stderr
            assert "installed 1.0.0" in trusted.stdout
            assert {s.target for s in proxy.seen} == {f"updates.example.test:{port}"}
            refused = check(system, "b")
            assert refused.returncode == 1
            assert "looks like TLS inspection" in refused.stderr, refused.stderr
            assert "[network] ca_bundle" in refused.stderr


# --- packaging files for the other OSes (cheap; no build) -----------------------------------------


def test_macos_info_plist_is_a_menu_bar_app() -> None:
    with (PACKAGING / "macos" / "Info.plist").open("rb") as fh:
        info = plistlib.load(fh)
    assert info["LSUIElement"] is True  # no Dock icon
    assert "CFBundleShortVersionString" not in info  # build.spec sets the version


def test_windows_version_resource_template_fills_in() -> None:
    template = (PACKAGING / "windows" / "version_info.txt").read_text()
    assert "filevers=(@VERSION_TUPLE@)" in template and "u'@VERSION@'" in template
    filled = template.replace("@VERSION_TUPLE@", "1, 2, 3, 0").replace("@VERSION@", "1.2.3")
    # The text is a Python expression PyInstaller evaluates; check it parses.
    compile(filled, "version_info.txt", "eval")


def test_linux_desktop_file_is_valid(tmp_path: Path) -> None:
    desktop = PACKAGING / "linux" / "trayupdater.desktop"
    text = desktop.read_text()
    assert re.search(r"^Exec=trayupdater run$", text, re.M)
    assert re.search(r"^Icon=trayupdater$", text, re.M)
    validate = shutil.which("desktop-file-validate")
    if validate:
        result = subprocess.run([validate, str(desktop)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_release_workflow_asset_names_are_what_the_app_picks() -> None:
    workflow = (PACKAGING / "ci" / "release.yml").read_text()
    names = sorted(set(re.findall(r"trayupdater_[A-Za-z]+_[a-z0-9_]+\.(?:tar\.gz|zip)", workflow)))
    assert len(names) >= 5, names
    everything = [*names, "checksums.txt", "simple-server_Linux_x86_64.tar.gz"]
    from trayupdater.selfupdate import DEFAULT_ASSET_PATTERN

    for platform, expected in [
        (Platform("linux", "x86_64"), "trayupdater_Linux_x86_64.tar.gz"),
        (Platform("linux", "aarch64"), "trayupdater_Linux_arm64.tar.gz"),
        (Platform("darwin", "arm64"), "trayupdater_Darwin_arm64.zip"),
        (Platform("darwin", "x86_64"), "trayupdater_Darwin_x86_64.zip"),
        (Platform("windows", "x86_64"), "trayupdater_Windows_x86_64.zip"),
    ]:
        assert expected in names
        picked = pick_asset(everything, platform, repo=APP_REPO, pattern=DEFAULT_ASSET_PATTERN)
        assert picked == expected, platform
    assert "checksums.txt" in workflow
