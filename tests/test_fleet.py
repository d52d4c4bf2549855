"""A fleet against one TUF repository on a real static server (nginx): phased rollout across
40 installations (each its own data folder and ``trayupdater check`` process), the timer and
a user's check under a rollout, and a recall that makes a running app fall back while
clients keep sending requests.

The 40 install ids are written by the test from a fixed seed, so the share that falls
inside 25 % is the same on every run (drawing them is tested in test_rollout.py); which
machines take the version, and whether they do again, is decided by the real client each
time. Run with ``-s`` to see the fleet's table.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from static_server import StaticServer
from support import Instance, Load, wait_for
from tuf_support import Publisher

from trayupdater.children import free_port
from trayupdater.demo import DEMO_REPO
from trayupdater.rollout import ID_FILE, bucket

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX processes and signals")

FLEET = 40
PARALLEL = 4  # the box has two cores: enough to overlap start-up and the network, no more
SEED = 13


def source_args(server: StaticServer, publisher: Publisher) -> list[str]:
    return [
        "--set", "kind=tuf", "--set", f"url={server.url}",
        "--set", f"trusted_root={publisher.shipped_root}",
    ]  # fmt: skip


def status(instance: Instance) -> dict[str, Any]:
    return json.loads(instance.cli("status", "--json").stdout)


def rollout(publisher: Publisher, version: str, percent: str) -> None:
    publisher.repo("rollout", str(publisher.dir), "--version", version, "--percent", percent)


class Fleet:
    """Installations that each run ``trayupdater check`` as a process of its own, as a
    scheduled task would (so with manual_check_bypasses_rollout = false)."""

    def __init__(self, base: Path, args: list[str]) -> None:
        self.base = base
        self.args = args
        draw = random.Random(SEED)
        self.ids = [f"{draw.getrandbits(128):032x}" for _ in range(FLEET)]
        for n, ident in enumerate(self.ids):
            self.folder(n).mkdir(parents=True)
            (self.folder(n) / ID_FILE).write_text(ident + "\n")
        (base / "none.toml").write_text("")
        self.seconds: list[float] = []

    def folder(self, n: int) -> Path:
        return self.base / f"m{n:02d}"

    def check(self, n: int) -> dict[str, Any]:
        done = subprocess.run(
            [
                sys.executable, "-m", "trayupdater", "--config", str(self.base / "none.toml"),
                "--data-dir", str(self.folder(n)), "--repo", DEMO_REPO, *self.args,
                "--set", "manual_check_bypasses_rollout=false", "check", "--json",
            ],
            capture_output=True, text=True, timeout=180, env=os.environ,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    def run(self) -> list[dict[str, Any]]:
        started = time.monotonic()
        with ThreadPoolExecutor(PARALLEL) as pool:
            reports = list(pool.map(self.check, range(FLEET)))
        self.seconds.append(time.monotonic() - started)
        return reports

    def installed(self, version: str) -> set[int]:
        return {n for n in range(FLEET) if (self.folder(n) / "versions" / version).is_dir()}


def taking(reports: list[dict[str, Any]], version: str) -> set[int]:
    return {n for n, report in enumerate(reports) if report["tag"] == version}


@pytest.mark.slow
def test_a_fleet_of_40_takes_a_25_percent_rollout_and_a_recall_pulls_a_running_app_back(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    publisher.add("1.1.0", "--percent", "25")
    fleet = Fleet(tmp_path / "fleet", source_args(server, publisher))

    first = fleet.run()
    took = taking(first, "1.1.0")
    assert 3 <= len(took) <= 18, len(took)
    assert taking(first, "1.0.0") == set(range(FLEET)) - took  # the rest: what all may take
    assert fleet.installed("1.1.0") == took
    assert all("1.1.0 is rolling out: 25 % of machines so far" in r["notice"] for r in first
               if r["tag"] == "1.0.0")  # fmt: skip

    again = fleet.run()  # the same machines, asked again: the same answer
    assert taking(again, "1.1.0") == took

    rollout(publisher, "1.1.0", "0")  # halted
    halted = fleet.run()
    assert taking(halted, "1.1.0") == set()
    assert fleet.installed("1.1.0") == took  # nobody more; those that have it keep it
    assert all("rollout is at 0 %" in r["notice"] for r in halted)

    install_ids = [ident.encode() for ident in fleet.ids]
    log = (tmp_path / "server" / "access.log").read_bytes() if server.kind == "nginx" else b""
    assert not any(ident in log for ident in install_ids)  # never sent anywhere
    _print_fleet(fleet, took)

    # --- a recall pulls a running app back, under load, with no failed request -------------
    app = Instance.tuf(server.url, publisher.shipped_root, tmp_path / "app", free_port())
    scheduled = app.cli("--set", "manual_check_bypasses_rollout=false", "check")
    assert scheduled.returncode == 0 and "installed 1.0.0" in scheduled.stdout  # at 0 %
    app.start()
    try:
        wait_for(lambda: app.version() == "1.0.0", timeout=60, what="serving 1.0.0")
        with Load(("127.0.0.1", app.port)) as load:
            wait_for(lambda: load.count > 20, what="traffic")
            took_early = app.cli("check")  # a user's check: takes 1.1.0 although at 0 %
            assert "Updated to 1.1.0" in took_early.stdout, took_early.stdout
            wait_for(lambda: load.seen.get("1.1.0", 0) > 10, what="traffic on 1.1.0")

            publisher.repo("recall", str(publisher.dir), "--version", "1.1.0")
            pulled = app.cli("check")
            assert pulled.returncode == 0, pulled.stdout + pulled.stderr
            assert (
                "Automatically rolled back to 1.0.0: 1.1.0 was recalled by the publisher"
                in pulled.stdout
            )
            back = time.monotonic()
            wait_for(lambda: load.first_after(back, "1.0.0") is not None, what="1.0.0 again")
            now = status(app)
            assert now["active"] == "1.0.0" and "1.1.0" in now["blocked"]
            assert app.version() == "1.0.0"

            # Machines not on 1.1.0 never take it, a user's check included.
            fresh = fleet.check(next(iter(took)))
            assert fresh["tag"] == "1.0.0"

            # The publisher lifts the recall: the block it caused goes with it.
            publisher.repo("recall", str(publisher.dir), "--version", "1.1.0", "--undo")
            again_taken = app.cli("check")
            assert "Updated to 1.1.0" in again_taken.stdout, again_taken.stdout
            wait_for(lambda: app.version() == "1.1.0", what="1.1.0 again")
        assert load.failures == [], load.failures[:5]
        print(
            f"recall under load: {load.count} requests, {len(load.failures)} failed, "
            f"answers by version {dict(load.seen)}"
        )
        assert app.cli("quit").returncode == 0
    finally:
        app.kill()


def _print_fleet(fleet: Fleet, took: set[int]) -> None:
    buckets = sorted((bucket(ident, "1.1.0"), n) for n, ident in enumerate(fleet.ids))
    print(f"\nfleet of {FLEET}, 1.1.0 at 25 %: {len(took)} took it: {sorted(took)}")
    print("buckets for 1.1.0 (below 25 takes it): " + " ".join(f"{b:.0f}" for b, _ in buckets))
    for percent in (1, 5, 10, 25, 50, 100):
        inside = sum(b < percent for b, _ in buckets)
        print(f"  at {percent:3d} %: {inside:2d} of {FLEET} machines")
    rounds = ", ".join(f"{s:.1f} s" for s in fleet.seconds)
    print(f"rounds of {FLEET} checks ({PARALLEL} at a time): {rounds}")


def test_the_timer_never_bypasses_a_rollout_and_a_users_check_does(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.0.0")
    publisher.add("1.1.0", "--percent", "0")
    app = Instance.tuf(
        server.url, publisher.shipped_root, tmp_path / "data", free_port(),
        TRAYUPDATER_CHECK_INTERVAL="1",
    )  # fmt: skip
    scheduled = app.cli("--set", "manual_check_bypasses_rollout=0", "check", "--dry-run", "--json")
    report = json.loads(scheduled.stdout)
    assert (report["tag"], report["update_available"]) == ("1.0.0", True)
    assert report["notice"] == "1.1.0 is held back by the publisher (its rollout is at 0 %)"
    user = json.loads(app.cli("check", "--dry-run", "--json").stdout)
    assert user["tag"] == "1.1.0"  # a user's check: bypassed (the default)

    app.start()
    try:
        wait_for(lambda: app.version() == "1.0.0", timeout=60, what="serving 1.0.0")
        wait_for_timer_checks(app, 2)
        now = status(app)
        assert now["active"] == "1.0.0" and app.version() == "1.0.0"
        assert now["notice"] == "1.1.0 is held back by the publisher (its rollout is at 0 %)"
        shown = app.cli("status")
        assert "1.1.0 is held back by the publisher" in shown.stdout

        done = app.cli("check")  # the user's "Check for updates"
        assert "Updated to 1.1.0" in done.stdout, done.stdout
        assert status(app)["notice"] is None
        wait_for_timer_checks(app, 2)  # after it: no move back, nothing held back
        assert app.version() == "1.1.0" and status(app)["notice"] is None
    finally:
        app.kill()


def wait_for_timer_checks(app: Instance, count: int) -> None:
    seen = {status(app)["last_check"]}

    def checked() -> bool:
        seen.add(status(app)["last_check"])
        return len(seen - {None}) > count

    wait_for(checked, timeout=60, what=f"{count} checks by the timer")


def test_a_recalled_version_with_nothing_older_keeps_running_and_says_so(
    tmp_path: Path, publisher: Publisher, server: StaticServer
) -> None:
    publisher.add("1.1.0")
    app = Instance.tuf(server.url, publisher.shipped_root, tmp_path / "data", free_port())
    app.start()
    try:
        wait_for(lambda: app.version() == "1.1.0", timeout=60, what="serving 1.1.0")
        publisher.repo("recall", str(publisher.dir), "--version", "1.1.0")
        done = app.cli("check")
        said = (
            "1.1.0 was recalled by the publisher; nothing older is installed, so it keeps running"
        )
        assert said in done.stdout, done.stdout
        now = status(app)
        assert now["notice"] == said and now["active"] == "1.1.0"
        assert app.version() == "1.1.0"
        # A new installation never takes it.
        other = Instance.tuf(server.url, publisher.shipped_root, tmp_path / "other", free_port())
        report = json.loads(other.cli("check", "--dry-run", "--json").stdout)
        assert report["tag"] is None and report["update_available"] is False
    finally:
        app.kill()
