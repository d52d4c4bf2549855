"""Child processes for real: demo servers rendered into tmp_path, real signals, real ports."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from trayupdater.child_command import render_command
from trayupdater.children import Child, adopt, free_port, kill_stale, version_matches
from trayupdater.demo_server import KNOBS, render_script
from trayupdater.errors import ChildError, ConfigError

pytestmark = pytest.mark.skipif(
    os.name != "posix", reason="real POSIX processes, signals and shebang scripts"
)
LINUX = sys.platform.startswith("linux")
REPO = Path(__file__).resolve().parents[1]


# --- helpers -----------------------------------------------------------------------------------


def gone(pid: int) -> bool:
    """No such process, or only a zombie left (whoever its parent is may not reap it)."""
    if LINUX:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def assert_reaped(pid: int) -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@pytest.fixture
def make_exe(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(version: str = "1.3.0", **behaviour: object) -> Path:
        path = tmp_path / f"server-{version}-{next(counter)}"
        path.write_text(render_script(version, behaviour))
        path.chmod(0o755)
        return path

    return make


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Makes Child objects that are stopped at teardown whatever the test did."""
    made: list[Child] = []

    def make(exe: Path, version: str = "1.3.0", **kwargs: object) -> Child:
        kwargs.setdefault("log_path", tmp_path / "logs" / f"{exe.name}.log")
        child = Child(exe, version, **kwargs)  # type: ignore[arg-type]
        made.append(child)
        return child

    yield make
    for child in made:
        child.stop(timeout=2)


@pytest.fixture
def grandchildren() -> Iterator[list[int]]:
    """Grandchild pids to SIGKILL at teardown should a failing test leave them running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            if b"time.sleep(3600)" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture
def orphans() -> Iterator[list[tuple[int, Path]]]:
    """Processes started by a helper that exited at once, as a crashed app leaves them."""
    started: list[tuple[int, Path]] = []
    yield started
    for pid, exe in started:
        kill_stale(pid, exe, timeout=1)


def spawn_orphan(exe: Path, port: int, log: Path, orphans: list[tuple[int, Path]]) -> int:
    code = (
        "import subprocess, sys;"
        "p = subprocess.Popen(sys.argv[1:3], stdout=open(sys.argv[3], 'ab'),"
        " stderr=subprocess.STDOUT, start_new_session=True);"
        "print(p.pid)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(exe), str(port), str(log)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    pid = int(out)
    orphans.append((pid, exe))

    def answers() -> bool:
        try:
            return get(port, "/version") != ""
        except OSError:
            return False

    wait_until(answers, 20, "the orphan to answer")
    return pid


# --- pure parts --------------------------------------------------------------------------------


def test_render_command_fills_placeholders() -> None:
    argv = render_command(
        ["{exe}", "--port={port}", "--v", "{version}", "{host}", "{{literal}}"],
        exe=Path("/opt/app/server"),
        port=8123,
        version="1.3.0",
        host="127.0.0.1",
    )
    assert argv == ["/opt/app/server", "--port=8123", "--v", "1.3.0", "127.0.0.1", "{literal}"]
    assert render_command(("{exe}", "{port}"), exe=Path("x"), port=1, version="v") == ["x", "1"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (["{exe}", "{prot}"], "unknown placeholder {prot}"),
        (["{exe}", "{0}"], "bad placeholder"),
        (["{exe", "{port}"], "bad placeholder"),
        ([], "empty"),
        ("{exe} {port}", "list of arguments"),
    ],
)
def test_render_command_rejects_bad_templates(template: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        render_command(template, exe=Path("x"), port=1, version="1")  # type: ignore[arg-type]


def test_child_validates_its_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"port must be 1\.\.65535, got 70000"):
        Child(tmp_path / "x", "1.0.0", port=70000, log_path=tmp_path / "log")
    with pytest.raises(ConfigError, match="unknown placeholder"):
        Child(tmp_path / "x", "1.0.0", command=["{exe}", "{nope}"], log_path=tmp_path / "log")
    with pytest.raises(ChildError, match="never started"):
        Child(tmp_path / "x", "1.0.0", log_path=tmp_path / "log").wait_healthy(timeout=1)


def test_free_port_can_be_bound() -> None:
    import socket

    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("answer", "expect", "ok"),
    [
        ("1.3.0", "1.3.0", True),
        ("v1.3.0", "1.3.0", True),
        ("1.3.0\n", "v1.3.0", True),
        ("1.3.0-rc.1", "1.3.0rc1", True),  # goreleaser's spelling vs packaging's
        ("1.2.0", "1.3.0", False),
        ("dev", "1.3.0", False),
        ("", "1.3.0", False),
        ("anything", "", True),
    ],
)
def test_version_matches(answer: str, expect: str, ok: bool) -> None:
    assert version_matches(answer, expect) is ok


def test_render_script_rewrites_exactly_the_knob_lines() -> None:
    source = Path(render_script.__code__.co_filename).read_text()
    assert [ln for ln in source.splitlines() if ln.startswith("VERSION = ")] == [
        'VERSION = "0.0.0"'
    ]
    assert [ln for ln in source.splitlines() if ln.startswith("BEHAVIOUR = ")] == ["BEHAVIOUR = {}"]
    script = render_script("1.3.0", {"CRASH_AT_START": True}, python="/usr/bin/python3")
    assert script.startswith("#!/usr/bin/python3\n")
    assert "\nVERSION = '1.3.0'\n" in script
    assert "\nBEHAVIOUR = {'CRASH_AT_START': True}\n" in script
    assert not script.splitlines()[1].startswith("#!")  # the original shebang was replaced
    with pytest.raises(ValueError, match="unknown demo-server knob"):
        render_script("1.3.0", {"CRASH_AT_STRAT": True})
    with pytest.raises(ValueError, match="one non-empty line"):
        render_script("1.3.0\nimport os")
    assert set(KNOBS) >= {"CRASH_AT_START", "CRASH_AFTER_SECONDS", "WRONG_VERSION"}


# --- one child ---------------------------------------------------------------------------------


def test_start_healthy_then_graceful_stop(make_exe, spawn) -> None:
    child = spawn(make_exe("1.3.0"))
    assert child.pid is None and not child.is_alive()
    child.start()
    child.wait_healthy(timeout=20)
    assert child.is_alive() and child.returncode is None
    pid = child.pid
    assert get(child.port, "/version") == "1.3.0"
    assert "1.3.0" in get(child.port, "/")
    assert json.loads(get(child.port, "/info"))["pid"] == pid

    assert child.stop() == 0  # the demo server exits 0 on SIGTERM
    assert not child.is_alive() and child.returncode == 0
    assert_reaped(pid)
    assert child.stop() == 0  # idempotent
    log = child.log_path.read_text()
    assert log.startswith("--- started ")
    assert f" pid {pid} port {child.port}\n" in log.splitlines(keepends=True)[0]
    assert "signal 15" in log and "shut down cleanly" in log


def test_a_client_reset_is_no_traceback_in_the_child_log(make_exe, spawn) -> None:
    """The proxy cuts connections at a switch; the demo child printed socketserver's
    traceback for each reset into its log, which reads like a crash."""
    child = spawn(make_exe("1.3.0"))
    child.start()
    child.wait_healthy(timeout=20)
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", child.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(0.1)  # the handler is reading its request line
        sock.close()  # RST
    time.sleep(0.2)
    assert get(child.port, "/version") == "1.3.0"
    assert child.stop() == 0
    log = child.log_path.read_text()
    assert "Traceback" not in log and "ConnectionResetError" not in log, log


def test_log_is_appended_with_one_header_per_start(make_exe, spawn) -> None:
    child = spawn(make_exe("1.3.0"))
    pids = []
    for _ in range(2):
        child.start()
        child.wait_healthy()
        pids.append(child.pid)
        child.stop()
    headers = [ln for ln in child.log_path.read_text().splitlines() if ln.startswith("---")]
    assert [h.split(" pid ")[1] for h in headers] == [f"{p} port {child.port}" for p in pids]


def test_health_tolerates_a_leading_v_on_both_sides(make_exe, spawn) -> None:
    plain = spawn(make_exe("1.3.0"), "v1.3.0")
    prefixed = spawn(make_exe("v2.0.0"), "2.0.0")
    for child in (plain, prefixed):
        child.start()
    for child in (plain, prefixed):
        child.wait_healthy(timeout=20)


def test_health_path_and_expectation_are_configurable(make_exe, spawn) -> None:
    child = spawn(make_exe("1.3.0"), env={"DEMO_VERSION": "2.5.0"})
    child.start()
    child.wait_healthy(path="/health", expect="ok")
    child.wait_healthy(path="/status", expect="")  # any 200 answer
    child.wait_healthy(expect="2.5.0")  # env overrides the rendered version
    with pytest.raises(ChildError, match=r"GET /nope answered HTTP 404"):
        child.wait_healthy(path="/nope", timeout=0.5)


def test_wrong_version_says_what_it_answered(make_exe, spawn) -> None:
    child = spawn(make_exe("1.3.0", WRONG_VERSION="1.2.0"))
    child.start()
    started = time.monotonic()
    with pytest.raises(ChildError, match=r"answered 1\.2\.0, expected 1\.3\.0") as info:
        child.wait_healthy(timeout=1.5)
    assert time.monotonic() - started >= 1.5
    assert "not healthy after 1.5 s" in str(info.value)
    assert child.is_alive()  # wait_healthy does not stop it: the caller decides


def test_crash_at_start_fails_fast_with_the_log_tail_apart(make_exe, spawn) -> None:
    child = spawn(make_exe("1.3.0", CRASH_AT_START=True))
    child.start()
    started = time.monotonic()
    with pytest.raises(ChildError) as info:
        child.wait_healthy(timeout=60)
    took = time.monotonic() - started
    assert took < 10, f"noticed the crash only after {took:.1f} s"
    message = str(info.value)
    assert "exited with code 3 before it became healthy" in message
    assert "\n" not in message  # one sentence for the status line; the log tail is apart
    assert "crashing at start as configured" in info.value.details
    logged = info.value.for_log().splitlines()
    assert logged[0] == message
    # The child's own words are indented below the message, never glued to it.
    assert any(line.startswith("    | ") and "crashing at start" in line for line in logged)
    assert any(line.startswith("    | --- started") for line in logged)
    assert child.returncode == 3


def test_slow_start_is_fine_within_the_timeout(make_exe, spawn) -> None:
    child = spawn(make_exe("1.3.0", SLOW_START_SECONDS=1.0))
    child.start()
    started = time.monotonic()
    child.wait_healthy(timeout=30)
    assert time.monotonic() - started >= 0.9


def test_exec_failures_raise_child_error_with_the_log(tmp_path, make_exe, spawn) -> None:
    missing = spawn(tmp_path / "no-such-server")
    with pytest.raises(ChildError, match=r"could not start no-such-server 1\.3\.0.*No such file"):
        missing.start()
    assert "--- could not start" in missing.log_path.read_text()
    assert not missing.is_alive() and missing.pid is None

    not_executable = make_exe("1.3.0")
    not_executable.chmod(0o644)
    child = spawn(not_executable)
    with pytest.raises(ChildError, match="Permission denied") as info:
        child.start()
    assert "--- could not start" in info.value.details  # the log tail, apart from the message


def test_starting_a_running_child_again_is_refused(make_exe, spawn) -> None:
    child = spawn(make_exe("1.3.0"))
    child.start()
    with pytest.raises(ChildError, match="already running"):
        child.start()


def test_stop_escalates_to_sigkill_and_reaps(make_exe, spawn) -> None:
    child = spawn(make_exe("1.3.0", IGNORE_SIGTERM=True))
    child.start()
    child.wait_healthy()
    pid = child.pid
    started = time.monotonic()
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    took = time.monotonic() - started
    assert 0.5 <= took < 5
    assert_reaped(pid)
    assert "signal 15" not in child.log_path.read_text()  # it really ignored SIGTERM


def test_stop_takes_the_whole_process_group(make_exe, spawn, grandchildren) -> None:
    child = spawn(make_exe("1.3.0", SPAWN_GRANDCHILD=True))
    child.start()
    child.wait_healthy()
    grandchild = json.loads(get(child.port, "/info"))["grandchild_pid"]
    grandchildren.append(grandchild)
    assert grandchild and not gone(grandchild)
    # The grandchild ignores SIGTERM; the leader exits 0 on it; the group clean-up kills the rest.
    assert child.stop() == 0
    wait_until(lambda: gone(grandchild), 5, "the grandchild to be killed")


def test_a_crash_leaves_no_grandchild_behind(make_exe, spawn, grandchildren) -> None:
    child = spawn(make_exe("1.3.0", SPAWN_GRANDCHILD=True, CRASH_AFTER_SECONDS=1.0))
    child.start()
    child.wait_healthy()
    grandchild = json.loads(get(child.port, "/info"))["grandchild_pid"]
    grandchildren.append(grandchild)
    assert child.wait_exit(timeout=20)
    assert child.returncode == 4
    wait_until(lambda: gone(grandchild), 5, "the grandchild to be killed")


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux only")
def test_child_dies_with_the_app_even_on_sigkill(make_exe, tmp_path) -> None:
    exe = make_exe("1.3.0")
    log = tmp_path / "child.log"
    app = textwrap.dedent(
        """
        import sys, threading, time
        from pathlib import Path
        from trayupdater.children import Child

        def start():  # from a thread that ends: pdeathsig must not fire with it
            child.start()

        child = Child(Path(sys.argv[1]), "1.3.0", log_path=Path(sys.argv[2]))
        worker = threading.Thread(target=start)
        worker.start()
        worker.join()
        child.wait_healthy()
        print(child.pid, flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", app, str(exe), str(log)], stdout=subprocess.PIPE, text=True, env=env
    )
    pid = 0
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"app said {line!r}"
        pid = int(line)
        assert not gone(pid)
        parent.kill()
        parent.wait(timeout=10)
        wait_until(lambda: gone(pid), 10, "the orphaned child to stop")
        assert "signal 15" in log.read_text()  # told to stop, it shut down cleanly
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        if pid:
            kill_stale(pid, exe, timeout=1)  # only does something if the test failed


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux only")
def test_spawning_thread_exit_does_not_stop_the_child(make_exe, spawn) -> None:
    child = spawn(make_exe("1.3.0"))
    worker = threading.Thread(target=child.start)
    worker.start()
    worker.join()
    child.wait_healthy()
    # pdeathsig would fire right when the forking thread ends; give it a second to show up.
    assert not child.wait_exit(timeout=1.0)
    assert child.is_alive()


# --- leftovers of an earlier run ---------------------------------------------------------------


def test_kill_stale_only_kills_our_program(make_exe, tmp_path, orphans, grandchildren) -> None:
    exe = make_exe("1.3.0", SPAWN_GRANDCHILD=True)
    port = free_port()
    pid = spawn_orphan(exe, port, tmp_path / "orphan.log", orphans)
    grandchild = json.loads(get(port, "/info"))["grandchild_pid"]
    grandchildren.append(grandchild)

    assert kill_stale(pid, tmp_path / "some-other-program") is False
    assert not gone(pid)
    assert kill_stale(pid, exe) is True
    assert gone(pid)
    wait_until(lambda: gone(grandchild), 5, "the orphan's group to be killed")
    assert kill_stale(pid, exe) is False  # nothing left to kill


def test_kill_stale_reaps_our_own_child(make_exe, tmp_path) -> None:
    exe = make_exe("1.3.0")
    proc = subprocess.Popen([str(exe), str(free_port())], start_new_session=True)
    try:
        assert kill_stale(proc.pid, exe, timeout=5) is True
        assert_reaped(proc.pid)
    finally:
        proc.kill()


def test_adopt_checks_pid_program_and_port(make_exe, tmp_path, orphans) -> None:
    exe = make_exe("1.3.0")
    port = free_port()
    log = tmp_path / "orphan.log"
    pid = spawn_orphan(exe, port, log, orphans)

    assert adopt(pid, "1.3.0", free_port(), exe=exe, log_path=log, timeout=0.5) is None
    assert adopt(pid, "1.3.0", port, exe=tmp_path / "other", log_path=log) is None
    assert adopt(pid, "1.2.0", port, exe=exe, log_path=log, timeout=0.5) is None

    child = adopt(pid, "1.3.0", port, exe=exe, log_path=log)
    assert child is not None
    assert child.pid == pid and child.port == port and child.is_alive()
    assert child.stop() is None  # not our child: its exit code is unknown
    assert gone(pid) and not child.is_alive()
    assert "signal 15" in log.read_text()
    assert adopt(pid, "1.3.0", port, exe=exe, log_path=log) is None


def test_a_health_answer_dripped_a_byte_at_a_time_is_cut_at_the_timeout() -> None:
    """Each read's timeout alone let a child that sends a byte every half second hold a
    health check for as long as its answer lasts (64 KiB: nine hours)."""
    import socket

    from trayupdater.children import _http_get

    listener = socket.create_server(("127.0.0.1", 0))

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n")
            with contextlib.suppress(OSError):
                for _ in range(60000):
                    conn.sendall(b"1")
                    time.sleep(0.5)

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    try:
        _status, body = _http_get("127.0.0.1", listener.getsockname()[1], "/version", 1.0)
    except (OSError, http.client.HTTPException):
        pass  # cut in the middle of a read
    else:
        assert len(body) < 10, "cut short: what came within the second"
    assert time.monotonic() - started < 2.5
    listener.close()
