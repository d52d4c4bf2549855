"""Benchmark the app as a whole: failed requests across update/rollback cycles, time from
"release visible" to "traffic on the new version" (minus the child's own start-up), and the
idle CPU and memory of a running app; then every way a child can die (``--phases``):
failed requests per phase, the time from a child's exit to traffic on the warm previous
version, and the longest a request waited. Prints tables; not a test.

    python bench/bench_updates.py [--cycles 20] [--clients 8] [--idle-seconds 10] [--phases]

The app runs as a real headless process against a real local release feed; the load comes
from keep-alive client threads in this process (or wrk when installed, for the cycles).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from app_harness import process_cpu, process_rss_mib  # shared with bench_proxy
from support import Instance, Load  # shared with the end-to-end tests

from trayupdater.children import free_port
from trayupdater.control import ControlClient
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.status import Command


def start_app(feed: ReleaseFeed, data: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    settings = {"TRAYUPDATER_PROBATION_SECONDS": "0", "TRAYUPDATER_KEEP_VERSIONS": "100"}
    app = Instance(feed, data, port, **{**settings, **env})
    return app.start()


def wait_client(data: Path, timeout: float = 30) -> ControlClient:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = ControlClient.find(data)
        if client and client.status().get("phase") == "running":
            return client
        time.sleep(0.1)
    raise SystemExit("app did not start")


def child_start_ms(data: Path, version: str) -> float | None:
    log = (data / "logs" / "trayupdater.log").read_text()
    found = re.findall(rf"{re.escape(version)} healthy (\d+) ms after start", log)
    return float(found[-1]) if found else None


@dataclass
class RunningApp:
    feed: ReleaseFeed
    proc: subprocess.Popen[bytes]
    port: int
    data: Path
    client: ControlClient


@contextlib.contextmanager
def running_app(**env: str) -> Iterator[RunningApp]:
    """A headless app serving 1.0.0 from a fresh feed and data folder; stopped afterwards."""
    work = Path(tempfile.mkdtemp(prefix="bench-updates-"))
    port = free_port()
    try:
        with ReleaseFeed() as feed:
            publish_version(feed, "1.0.0")
            proc = start_app(feed, work / "data", port, **env)
            try:
                yield RunningApp(feed, proc, port, work / "data", wait_client(work / "data"))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_cycles(cycles: int, clients: int) -> dict[str, object]:
    switch_ms: list[float] = []
    with running_app() as app, Load(("127.0.0.1", app.port), clients) as load:
        for n in range(1, cycles + 1):
            version = f"1.0.{n}"
            publish_version(app.feed, version)
            published = time.monotonic()
            app.client.command(Command.CHECK)  # "release visible": ask now, not at next poll
            while version not in load.first_seen and time.monotonic() - published < 30:
                time.sleep(0.001)
            start_ms = child_start_ms(app.data, version) or 0.0
            if version in load.first_seen:
                total_ms = (load.first_seen[version] - published) * 1000
                switch_ms.append(total_ms - start_ms)
            app.client.command(Command.ROLLBACK)
            app.client.command(Command.RESUME)
        time.sleep(0.3)
    switch_ms.sort()
    return {
        "cycles": cycles,
        "requests": load.count,
        "failed": len(load.failures),
        "errors": load.failures[:5],
        "visible_to_traffic_ms_p50": switch_ms[len(switch_ms) // 2] if switch_ms else None,
        "visible_to_traffic_ms_max": switch_ms[-1] if switch_ms else None,
    }


# --- every way a child can die ------------------------------------------------------------


def _state(app: RunningApp) -> dict[str, object]:
    import json

    return json.loads((app.data / "state.json").read_text())


def _wait(predicate: object, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def _blocked(app: RunningApp, version: str) -> bool:
    return version in (_state(app).get("blocked") or [])


def _restarted(app: RunningApp, pid: object) -> bool:
    return _state(app).get("child_pid") not in (None, pid)


def _phase_bad_release(behaviour: dict[str, object], **env: str) -> PhaseResult:
    with running_app(**env) as app, Load(("127.0.0.1", app.port), 8) as load:
        publish_version(app.feed, "1.1.0", behaviour=behaviour)
        app.client.command(Command.CHECK)
        _wait(lambda: _blocked(app, "1.1.0"))
        time.sleep(0.5)
    return PhaseResult(load)


def _phase_kill_in_probation() -> PhaseResult:
    env = {"TRAYUPDATER_PROBATION_SECONDS": "60", "TRAYUPDATER_MIN_READY_SECONDS": "0.5"}
    with running_app(**env) as app, Load(("127.0.0.1", app.port), 8) as load:
        publish_version(app.feed, "1.1.0")
        app.client.command(Command.CHECK)
        _wait(lambda: "1.1.0" in load.seen)
        time.sleep(0.5)
        killed = time.monotonic()
        os.kill(int(_state(app)["child_pid"]), signal.SIGKILL)  # type: ignore[arg-type]
        _wait(lambda: load.first_after(killed, "1.0.0") is not None)
        back = load.first_after(killed, "1.0.0")
        _wait(lambda: _blocked(app, "1.1.0"))
        time.sleep(0.5)
    return PhaseResult(load, fallback_ms=(back - killed) * 1000 if back else None)


def _phase_kill_active(times: int) -> PhaseResult:
    with (
        running_app(TRAYUPDATER_PROBATION_SECONDS="0") as app,
        Load(("127.0.0.1", app.port), 8) as load,
    ):
        time.sleep(0.5)
        for _ in range(times):
            pid = _state(app)["child_pid"]
            os.kill(int(pid), signal.SIGKILL)  # type: ignore[arg-type]
            _wait(lambda pid=pid: _restarted(app, pid))
        _wait(lambda: app.client.status().get("phase") == "running")
        time.sleep(0.5)
    return PhaseResult(load)


@dataclass
class PhaseResult:
    load: Load
    fallback_ms: float | None = None


PHASES: list[tuple[str, object]] = [
    ("crash during the soak (dies 1 s after start)",
     lambda: _phase_bad_release(
         {"CRASH_AFTER_SECONDS": 1.0},
         TRAYUPDATER_PROBATION_SECONDS="30",
         TRAYUPDATER_MIN_READY_SECONDS="5",  # the default
     )),
    ("crash during probation (dies 2 s after start)",
     lambda: _phase_bad_release(
         {"CRASH_AFTER_SECONDS": 2.0},
         TRAYUPDATER_PROBATION_SECONDS="30",
         TRAYUPDATER_MIN_READY_SECONDS="0.5",
     )),
    ("SIGKILL of the new version on probation", _phase_kill_in_probation),
    ("wrong version", lambda: _phase_bad_release(
        {"WRONG_VERSION": "9.9.9"},
        TRAYUPDATER_HEALTH_TIMEOUT="3",
        TRAYUPDATER_PROBATION_SECONDS="30",
    )),
    ("crash at start", lambda: _phase_bad_release(
        {"CRASH_AT_START": True}, TRAYUPDATER_PROBATION_SECONDS="30")),
    ("SIGKILL of the active child (outside probation)", lambda: _phase_kill_active(1)),
    ("SIGKILL again during the back-off (3 kills)", lambda: _phase_kill_active(3)),
    ("crash loop after probation (dies every 1.5 s)",
     lambda: _phase_bad_release(
         {"CRASH_AFTER_SECONDS": 1.5},
         TRAYUPDATER_PROBATION_SECONDS="0.5",
         TRAYUPDATER_MIN_READY_SECONDS="0.3",
     )),
]  # fmt: skip


def bench_phases() -> None:
    rows = []
    for name, run in PHASES:
        result = run()  # type: ignore[operator]
        load = result.load
        fallback = f"{result.fallback_ms:.1f}" if result.fallback_ms is not None else "-"
        rows.append((name, load.count, len(load.failures), fallback, load.slowest * 1000))
        if load.failures:
            print(f"  {name}: first failures {load.failures[:3]}")
    width = max(len(r[0]) for r in rows)
    print(f"{'phase':<{width}}  {'requests':>8}  {'failed':>6}  {'exit->fallback ms':>17}"
          f"  {'longest request ms':>18}")  # fmt: skip
    for name, count, failed, fallback, slowest in rows:
        print(f"{name:<{width}}  {count:>8}  {failed:>6}  {fallback:>17}  {slowest:>18.0f}")


def bench_idle(seconds: float) -> dict[str, float]:
    with running_app() as app:
        time.sleep(1.0)  # let start-up work finish
        before = process_cpu(app.proc.pid)
        time.sleep(seconds)
        after = process_cpu(app.proc.pid)
        rss_mib = process_rss_mib(app.proc.pid)
    return {"idle_cpu_percent_of_core": 100.0 * (after - before) / seconds, "rss_mib": rss_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--phases", action="store_true", help="only the failure phases")
    args = parser.parse_args()
    if args.phases:
        bench_phases()
        return

    cycles = bench_cycles(args.cycles, args.clients)
    idle = bench_idle(args.idle_seconds)
    rows = [
        ("update+rollback cycles under load", f"{cycles['cycles']}", ""),
        ("requests during cycles", f"{cycles['requests']}", ""),
        ("failed requests", f"{cycles['failed']}", "target 0"),
        (
            "release visible -> traffic, minus child start (p50)",
            f"{cycles['visible_to_traffic_ms_p50']:.0f} ms",
            "includes check + download + verify",
        ),
        ("  same, worst", f"{cycles['visible_to_traffic_ms_max']:.0f} ms", ""),
        (
            "idle CPU of the app",
            f"{idle['idle_cpu_percent_of_core']:.2f} % of a core",
            "target < 1 %",
        ),
        ("app memory (RSS)", f"{idle['rss_mib']:.1f} MiB", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")
    if cycles["errors"]:
        print("first errors:", cycles["errors"])


if __name__ == "__main__":
    main()
