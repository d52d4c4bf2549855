"""Property: the update lifecycle, end to end, keeps serving and says what it serves.

A hypothesis state machine drives the real App (headless, in this process) against the real
local release feed, with real child processes built by ``demo.child_archive`` and real HTTP
through the proxy on a free port, while background keep-alive clients send GET /version
through the proxy all the time. Its rules:

- publish the next release (1.1.0, 1.2.0, ...), whose child is healthy (plain, slow to start
  within the health timeout, or spawning a grandchild that ignores SIGTERM), exits at once,
  answers the wrong version, starts slower than the health timeout, dies during its soak,
  dies on probation, or passes probation and then crash-loops; or whose release is broken
  (an archive that is no archive, a wrong checksum, no asset for this platform); and
  sometimes "check now" right after;
- check for updates now; roll back; kill the serving child with SIGKILL (at most three
  times in a row: the third is a crash loop, and the restart back-off stays well within
  ``hold_seconds``); quit the app and start it again on the same data folder and port (the
  start-up check included); unpublish a release;
- update to a healthy release and, while it is on probation with the old child warm, at
  once roll back, kill it, quit and start again, or check for another release (healthy,
  or one that exits at start).

A small model of the documented rules (README "How an update happens", DESIGN.md) says
which version must serve after each step: a newer release that is not blocked is installed;
a version that fails to start, fails its soak, fails probation or crash-loops is rolled back
from and blocked; "Roll back" goes to ``previous`` (the old active after an update, else the
newest installed older version that is not blocked); three exits of one version roll back;
a broken release is an error that leaves the current version serving, and is not blocked;
versions beyond ``keep_versions`` are pruned when probation passes. Where the product may
take one of two paths (a child dying at 1 s dies in its soak or on probation, an action
meant for probation comes after it, depending on the machine's speed), the status history
or the state on disk says which one it took and the model follows it.

Checked after every step, once the app has settled (no probation, no restart pending):

1. no request through the proxy failed, except while the app was quitting and starting
   again (the proxy is closed then); a dead child's restart is *held*, never a 503, because
   the back-off stays below ``hold_seconds``; every answer was a version that is healthy,
   or one that died on probation or after it (it served until it died), never one that
   failed before traffic, nor a wrong version text;
2. the proxy serves the model's version; /info through the proxy names the pid state.json
   records; the status (App API), state.json and the model agree on active, previous,
   blocked; the versions on disk are the model's; the active version is a healthy one;
3. the update worker is alive; the step took less than STEP_LIMIT seconds;
4. the only process running an executable of the data folder is the serving child, and
   every grandchild of a stopped child is gone; after each quit, none is left.

``TRAYUPDATER_LIFECYCLE_EXAMPLES=N`` runs N random examples instead of the derandomized
default set (``TRAYUPDATER_LIFECYCLE_STEPS``: steps per example, 5 by default;
``TRAYUPDATER_LIFECYCLE_TRACE=1`` prints the steps as they run). The derandomized examples
favour short runs of checks, so fixed scripts (SCRIPTS) also put every kind of release and
every step through the same machine in each run. The regressions at the end are what the
property found.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from property_settings import property_settings
from support import Load, alive, wait_for
from test_runtime import make_config, running

from trayupdater.app import App
from trayupdater.config import Config
from trayupdater.demo import DEMO_REPO, asset_name, child_archive, publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.platforms import Platform
from trayupdater.status import Command, Phase, Status
from trayupdater.store import version_key
from trayupdater.updater import _Job

HEALTH_TIMEOUT = 3.0
PROBATION = 1.5
HOLD_SECONDS = 10.0  # the restart back-off after 1 or 2 kills (0.5 s, 1 s) is well within
KEEP_VERSIONS = 3
STEP_LIMIT = 45.0  # seconds any one step may take, settling included
SETTLE = 40.0  # the longest a step waits for the app to settle (a crash loop takes ~10 s)
TRACE = bool(os.environ.get("TRAYUPDATER_LIFECYCLE_TRACE"))  # print the steps as they run
# Kills of one version in a row: the third is a crash loop (a rollback, or a restart after
# 2 s when there is nothing to roll back to); a fourth would wait 4 s, a sixth past the hold.
MAX_KILLS = 3

# What a published release does. Healthy children serve; the rest never serve for long.
BEHAVIOURS: dict[str, dict[str, object]] = {
    "healthy": {},
    "slow_ok": {"SLOW_START_SECONDS": 0.5},
    "grandchild": {"SPAWN_GRANDCHILD": True},
    "crash_at_start": {"CRASH_AT_START": True},
    "wrong_version": {"WRONG_VERSION": "9.9.9"},
    "slow_past_timeout": {"SLOW_START_SECONDS": HEALTH_TIMEOUT + 3},
    "dies_in_soak": {"CRASH_AFTER_SECONDS": 0.15},
    "dies_on_probation": {"CRASH_AFTER_SECONDS": 1.0},
    "dies_after_probation": {"CRASH_AFTER_SECONDS": 2.5},
}
HEALTHY = frozenset({"healthy", "slow_ok", "grandchild"})
FAILS_BEFORE_TRAFFIC = frozenset({"crash_at_start", "wrong_version", "slow_past_timeout"})
# These may take traffic before they die (soak and probation race with the machine's speed).
FAILS_LATER = frozenset({"dies_in_soak", "dies_on_probation", "dies_after_probation"})
BROKEN_RELEASES = frozenset({"broken_archive", "wrong_checksum", "no_asset"})
KINDS = sorted(BEHAVIOURS) + sorted(BROKEN_RELEASES)
# What act_on_probation does while a new version is on probation.
ON_PROBATION = ("roll_back", "kill_child", "restart_app", "update", "failed_update")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def publish_kind(feed: ReleaseFeed, version: str, kind: str) -> None:
    """Publish ``version`` whose child or release is of ``kind``."""
    tag = f"v{version}"
    if kind in BEHAVIOURS:
        publish_version(feed, version, behaviour=BEHAVIOURS[kind])
        return
    name, data = child_archive(version)
    if kind == "broken_archive":
        feed.publish(DEMO_REPO, tag, {name: b"this is not a gzip file\n" * 40})
    elif kind == "wrong_checksum":
        checksums = f"{'0' * 64}  {name}\n".encode()
        files = {name: data, "checksums.txt": checksums}
        feed.publish(DEMO_REPO, tag, files, checksums=False, digests=False)
    elif kind == "no_asset":
        other = asset_name(Platform("windows", "x86_64"))  # never this Linux machine's
        feed.publish(DEMO_REPO, tag, {other: data})
    else:
        raise AssertionError(kind)


def unpublish(feed: ReleaseFeed, version: str) -> None:
    """Delete the release of ``version`` from the feed (a publisher deleting a release)."""
    with feed._lock:
        releases = feed._repos[DEMO_REPO]
        releases[:] = [r for r in releases if r.tag != f"v{version}"]


def processes_running(folder: Path) -> set[int]:
    """Pids whose command line names a file under ``folder`` (the children of its versions)."""
    needle = os.fsencode(os.fspath(folder)) + b"/"
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and alive(int(entry)):
            found.add(int(entry))
    return found


def start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot): with the pid, names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def same_process(pid: int, started: str | None) -> bool:
    """Is the process that started at ``started`` as ``pid`` still running?"""
    return alive(pid) and start_time(pid) == started


def proxy_get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HOLD_SECONDS + 5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


class Traffic(Load):
    """Load through the proxy that knows when failures were allowed (the app restarting):
    every failure is kept with when it was asked and answered, so those inside a window
    can be told apart."""

    def __init__(self, port: int, clients: int = 2) -> None:
        # A short pause between requests leaves the 2 cores to the app and its children,
        # and still finds the proxy within milliseconds of its listening again (a restart).
        super().__init__(("127.0.0.1", port), clients, timeout=HOLD_SECONDS + 10, pause=0.002)
        self.windows: list[list[float]] = []  # [start, end]: failures allowed (app restarts)
        self.__enter__()

    def open_window(self) -> list[float]:
        window = [time.monotonic(), float("inf")]
        with self._lock:
            self.windows.append(window)
        return window

    def close_window(self, window: list[float]) -> None:
        with self._lock:
            window[1] = time.monotonic()

    def unexpected(self) -> list[str]:
        with self._lock:
            return [
                f"{what} (asked {asked:.3f}, answered {answered:.3f})"
                for what, (asked, answered) in zip(self.failures, self.failure_times, strict=True)
                if not any(start <= answered and asked <= end for start, end in self.windows)
            ]

    def close(self) -> None:
        self.__exit__()


@dataclass
class Model:
    """The documented rules, played on versions only."""

    kinds: dict[str, str] = field(default_factory=dict)  # version -> kind, all published
    published: list[str] = field(default_factory=list)  # in publishing order (latest last)
    active: str = "1.0.0"
    previous: str | None = None
    blocked: list[str] = field(default_factory=list)
    installed: set[str] = field(default_factory=lambda: {"1.0.0"})
    kills: int = 0  # exits of the active version since it went live (a crash loop at 3)
    error_expected: bool = False

    def older_than(self, version: str) -> str | None:
        older = [
            v
            for v in self.installed
            if version_key(v) < version_key(version) and v not in self.blocked
        ]
        return max(older, key=version_key) if older else None

    def prune(self) -> None:
        protect = {self.active, self.previous}
        ordered = sorted(self.installed, key=version_key)
        excess = len(ordered) - KEEP_VERSIONS
        for version in ordered:
            if excess <= 0:
                break
            if version not in protect:
                self.installed.discard(version)
                excess -= 1

    def check(self, *, prune: bool = True) -> str | None:
        """A check: the version it tries (and fails, or installs), or None. ``prune``:
        a healthy version's probation passes (False: it is still on probation)."""
        self.error_expected = False
        if not self.published:
            return None
        latest = self.published[-1]
        if version_key(latest) <= version_key(self.active) or latest in self.blocked:
            return None
        kind = self.kinds[latest]
        if kind in BROKEN_RELEASES:
            self.error_expected = True  # not blocked: the next check tries again
            return latest
        self.installed.add(latest)
        if kind in HEALTHY:
            self.previous, self.active = self.active, latest
            self.kills = 0
            if prune:
                self.prune()  # when probation passes
        else:
            self.blocked.append(latest)  # the active version stays, whatever the path
        return latest

    def failed_later(self, version: str, *, went_live: bool, crash_looped: bool) -> None:
        """``version`` (of FAILS_LATER) was tried: follow the path the product took."""
        if not went_live:
            return  # died in its start or soak: blocked, nothing else changed
        # It went live (previous: the old active, restarts counted afresh) and was rolled
        # back from: on probation, or after probation passed (pruned then) by a crash loop.
        if crash_looped:
            active, self.active, self.previous = self.active, version, self.active
            self.prune()
            self.active = active
        self.previous = self.older_than(self.active)
        self.kills = 0

    def rollback(self) -> bool:
        if self.previous is None or self.previous not in self.installed:
            return False
        old, self.active = self.active, self.previous
        if old not in self.blocked:
            self.blocked.append(old)
        self.previous = self.older_than(self.active)
        self.kills = 0
        return True

    def kill(self) -> bool:
        """The active child was killed: restarted, or a crash loop rolled back (True)."""
        self.kills += 1
        return self.kills >= 3 and self.rollback()

    def matches(self, app: App) -> bool:
        state = app.store.load_state()
        return (
            state.active == self.active
            and state.previous == self.previous
            and set(state.blocked) == set(self.blocked)
            and app.store.installed() == sorted(self.installed, key=version_key)
        )

    def may_serve(self, version: str) -> bool:
        kind = self.kinds.get(version, "healthy" if version == "1.0.0" else "")
        return kind in HEALTHY or kind in FAILS_LATER


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="lifecycle-"))
        self.data = self.root / "data"
        self.feed = ReleaseFeed().start()
        self.port = free_port()
        self.config: Config = make_config(
            self.feed,
            self.data,
            port=self.port,
            health_timeout=HEALTH_TIMEOUT,
            probation_seconds=PROBATION,
            hold_seconds=HOLD_SECONDS,
            first_retry=3600.0,  # no timer check after a failed one during an example
            keep_versions=KEEP_VERSIONS,
        )
        self.model = Model()
        self.next_minor = 1
        self.statuses: list[Status] = []
        # Grandchild pid -> (its start time, its child's pid): pids wrap at 32768 here.
        self.grandchildren: dict[int, tuple[str | None, int]] = {}
        self.killed: set[int] = set()  # child pids this test killed
        self.step_started = time.monotonic()
        self.app: App | None = None
        self.traffic: Traffic | None = None
        publish_kind(self.feed, "1.0.0", "healthy")
        self.model.kinds["1.0.0"] = "healthy"
        self.model.published.append("1.0.0")
        self.app = self._start_app()
        self._settle()
        self.traffic = Traffic(self.port)
        if TRACE:
            print(f"example: 1.0.0 serving in {time.monotonic() - self.step_started:.1f} s")

    # --- helpers ---------------------------------------------------------------------------

    def _start_app(self) -> App:
        app = App(self.config)
        app.updater.subscribe(lambda status: self.statuses.append(status))
        app.start()
        return app

    @property
    def running_app(self) -> App:
        assert self.app is not None
        return self.app

    def _begin(self, step: str) -> None:
        if TRACE:  # what each example does, and how long each step took
            print(
                f"  {step}  (after {time.monotonic() - self.step_started:.1f} s)",
                flush=True,
            )
        self.step_started = time.monotonic()
        self.statuses = []
        self.killed = set()  # restarted in the last step; a new child may reuse the pid

    def _quiet(self) -> bool:
        app = self.running_app
        serving = app.updater.serving
        status = app.updater.status()
        state = app.store.load_state()
        return (
            status.phase is Phase.RUNNING
            and serving.probation_until is None
            and serving.restart_at is None
            and serving.warm is None
            and app.updater._queue.empty()
            and status.active == self.model.active
            and set(status.blocked) == set(self.model.blocked)
            and state.child_pid is not None
            and state.child_pid not in self.killed
            and alive(state.child_pid)
        )

    def _idle(self) -> bool:
        """Quiet, and still so once the worker handled a job queued now (so the job it was
        doing, say stopping the warm child after probation, is done)."""
        if not self._quiet():
            return False
        barrier = _Job("test-barrier")  # no such command: the worker only marks it done
        self.running_app.updater._queue.put(barrier)
        return barrier.done.wait(STEP_LIMIT) and self._quiet()

    def _settle(self) -> None:
        with contextlib.suppress(AssertionError):
            wait_for(self._idle, timeout=SETTLE, what="the app to settle")
        # Whatever happened, the invariants say what is wrong.

    def _went_live(self, version: str) -> bool:
        return any(s.active == version for s in self.statuses)

    def _crash_looped(self, version: str) -> bool:
        return any(f"{version} crashed" in s.message for s in self.statuses)

    def _follow(self, tried: str | None) -> None:
        """Settle; then let the model follow the path a failing-later version took."""
        self._settle()
        if tried is not None and self.model.kinds[tried] in FAILS_LATER:
            self.model.failed_later(
                tried,
                went_live=self._went_live(tried),
                crash_looped=self._crash_looped(tried),
            )

    def _check_now(self) -> None:
        status = self.running_app.updater.request(Command.CHECK, timeout=STEP_LIMIT)
        tried = self.model.check()
        if self.model.error_expected:
            assert status.error and status.active == self.model.active, status
        self._follow(tried)

    def _stop_app(self) -> None:
        app = self.running_app
        app.stop()
        assert app.updater.wait(0), "the update worker did not stop"
        left = processes_running(self.data)
        assert not left, f"children left running after quit: {sorted(left)}"
        for grandchild, (started, _) in list(self.grandchildren.items()):
            wait_for(
                lambda g=grandchild, t=started: not same_process(g, t),
                5,
                what=f"grandchild {grandchild} gone",
            )
            del self.grandchildren[grandchild]

    # --- rules -----------------------------------------------------------------------------

    @rule(kind=st.sampled_from(KINDS), check_now=st.booleans())
    def publish(self, kind: str, check_now: bool) -> None:
        self._publish(kind, check_now=check_now)

    # Updates are what the lifecycle is about: two more rules make them common in examples.
    @rule(kind=st.sampled_from(sorted(HEALTHY)))
    def update(self, kind: str) -> None:
        self._publish(kind, check_now=True)

    @rule(kind=st.sampled_from(sorted(FAILS_BEFORE_TRAFFIC | FAILS_LATER)))
    def failed_update(self, kind: str) -> None:
        self._publish(kind, check_now=True)

    def _publish(self, kind: str, *, check_now: bool) -> None:
        version = f"1.{self.next_minor}.0"
        self._begin(f"publish {version} {kind}" + (" and check" if check_now else ""))
        self.next_minor += 1
        publish_kind(self.feed, version, kind)
        self.model.kinds[version] = kind
        self.model.published.append(version)
        if check_now:
            self._check_now()

    @rule(action=st.sampled_from(ON_PROBATION))
    def act_on_probation(self, action: str) -> None:
        """Update to a healthy version, then at once (on probation, the old child warm) roll
        back, kill it, quit and start again, or check for another update, good or failing.

        The product may be quicker or slower than this thread: if probation passed before
        the action, the outcome is the one of the same steps in a row. The model plays both
        paths and follows the one the product took."""
        version = f"1.{self.next_minor}.0"
        self._begin(f"publish {version} healthy and check, then {action} on probation")
        self.next_minor += 1
        publish_kind(self.feed, version, "healthy")
        self.model.kinds[version] = "healthy"
        self.model.published.append(version)
        app = self.running_app
        status = app.updater.request(Command.CHECK, timeout=STEP_LIMIT)
        assert status.active == version, status
        passed, on_probation = copy.deepcopy(self.model), self.model
        passed.check()
        on_probation.check(prune=False)
        if action == "roll_back":
            status = app.updater.request(Command.ROLLBACK, timeout=STEP_LIMIT)
            assert passed.rollback() and on_probation.rollback(), status
        elif action == "kill_child":
            pid = app.store.load_state().child_pid
            assert pid
            self.killed.add(pid)
            os.kill(pid, signal.SIGKILL)
            passed.kill()  # restarted
            # Failed probation: the warm old child serves again, the version is blocked.
            assert on_probation.rollback()
        elif action == "restart_app":
            # The quit stops both children; the start goes on with what is left of the
            # probation (it then passes and prunes), or with none if the quit took longer.
            self._restart()
            passed.kills = on_probation.kills = 0
        else:
            later = f"1.{self.next_minor}.0"
            kind = "healthy" if action == "update" else "crash_at_start"
            self.next_minor += 1
            publish_kind(self.feed, later, kind)
            for model in (passed, on_probation):
                model.kinds[later] = kind
                model.published.append(later)
            self.running_app.updater.request(Command.CHECK, timeout=STEP_LIMIT)
            passed.check()
            on_probation.check()  # a healthy one: it prunes when its probation passes
            if kind != "healthy":
                on_probation.prune()  # the first one's probation passes after the failure
        self._settle()
        paths = [passed, on_probation]
        self.model = next((m for m in paths if m.matches(self.running_app)), on_probation)

    @rule()
    def check(self) -> None:
        self._begin("check")
        self._check_now()

    @rule()
    def roll_back(self) -> None:
        self._begin("roll_back")
        could = self.model.previous is not None and self.model.previous in self.model.installed
        status = self.running_app.updater.request(Command.ROLLBACK, timeout=STEP_LIMIT)
        assert self.model.rollback() == could
        if not could:
            assert status.message == "Nothing to roll back to", status
        self._settle()

    @rule()
    def kill_child(self) -> None:
        self._begin("kill_child")
        if self.model.kills >= MAX_KILLS:
            # Not a precondition: the count depends on the path the product took, and
            # hypothesis needs the same steps drawn each time it replays an example.
            return
        pid = self.running_app.store.load_state().child_pid
        assert pid
        self.killed.add(pid)
        os.kill(pid, signal.SIGKILL)
        self.model.kill()
        self._settle()

    @rule()
    def restart_app(self) -> None:
        self._begin("restart_app")
        self._restart()
        self.model.kills = 0  # a new process counts exits afresh
        self._follow(self.model.check())

    def _restart(self) -> None:
        """Quit the app and start it again on the same data folder and port."""
        assert self.traffic is not None
        window = self.traffic.open_window()
        try:
            self._stop_app()
            self.app = None
            self.app = self._start_app()
        finally:
            self.traffic.close_window(window)
        # The start-up check runs first; this one waits for it (and finds nothing new).
        self.running_app.updater.request(Command.CHECK, timeout=STEP_LIMIT)

    @precondition(lambda self: len(self.model.published) > 1)
    @rule(data=st.data())
    def unpublish(self, data: st.DataObject) -> None:
        self.remove_release(data.draw(st.sampled_from(self.model.published[1:]), label="which"))

    def remove_release(self, version: str) -> None:
        self._begin(f"unpublish {version}")
        unpublish(self.feed, version)
        self.model.published.remove(version)

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def serves_what_it_says(self) -> None:
        if self.app is None or self.traffic is None:
            return  # __init__ failed half-way: teardown reports what it can
        app, model = self.app, self.model
        took = time.monotonic() - self.step_started
        assert took < STEP_LIMIT, f"the step took {took:.1f} s"
        assert app.updater._thread is not None and app.updater._thread.is_alive(), "worker died"
        status = app.updater.status()
        state = app.store.load_state()
        facts = f"model={model}\nstatus={status}\nstate={state}"
        assert status.phase is Phase.RUNNING, facts
        assert status.active == state.active == model.active, facts
        assert set(status.blocked) == set(state.blocked) == set(model.blocked), facts
        assert state.previous == model.previous, facts
        expected_previous = model.previous if model.previous in model.installed else None
        assert status.previous == expected_previous, facts
        assert app.store.installed() == sorted(model.installed, key=version_key), facts
        assert model.kinds[model.active] in HEALTHY, facts
        code, body = proxy_get(self.port, "/version")
        assert (code, body) == (200, model.active), facts
        code, body = proxy_get(self.port, "/info")
        assert code == 200, body
        info = json.loads(body)
        assert info["version"] == model.active and info["pid"] == state.child_pid, (
            info,
            facts,
        )
        grandchild = info["grandchild_pid"]
        if grandchild and grandchild not in self.grandchildren:
            self.grandchildren[grandchild] = (start_time(grandchild), info["pid"])
        # Old children were stopped (and reaped) by the worker before it settled.
        running = processes_running(self.data)
        assert running == {state.child_pid}, f"children running: {sorted(running)}; {facts}"
        for grandchild, (started, parent) in list(self.grandchildren.items()):
            if parent != state.child_pid:
                assert not same_process(grandchild, started), f"grandchild {grandchild} left"
                del self.grandchildren[grandchild]
        failures = self.traffic.unexpected()
        assert not failures, f"{len(failures)} failed requests: {failures[:5]}\n{facts}"
        wrong = [v for v in self.traffic.seen if not model.may_serve(v)]
        assert not wrong, f"served {wrong}; seen {self.traffic.seen}"

    def teardown(self) -> None:
        try:
            if self.app is not None:
                self._stop_app()
        finally:
            if self.traffic is not None:
                self.traffic.close()
            if self.app is not None:
                self.app.stop()
            self.feed.close()
            _forget_log_handlers(self.root)
            shutil.rmtree(self.root, ignore_errors=True)


def _forget_log_handlers(folder: Path) -> None:
    """App.start adds a file handler for its data folder to the root logger: drop ours."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        name = getattr(handler, "baseFilename", "")
        if name and name.startswith(os.fspath(folder)):
            root.removeHandler(handler)
            handler.close()


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(
    property_settings("TRAYUPDATER_LIFECYCLE_EXAMPLES", 2),
    stateful_step_count=int(os.environ.get("TRAYUPDATER_LIFECYCLE_STEPS", "5")),
)

# hypothesis's few derandomized examples favour short runs of checks; these scripts put
# every kind of release and every step through the same machine and invariants in CI.
SCRIPTS = {
    "failures_and_a_crash_loop": [
        ("update", "healthy"),  # 1.1.0
        ("failed_update", "crash_at_start"),
        ("failed_update", "wrong_version"),  # 1.3.0
        ("update", "healthy"),  # 1.4.0 (1.0.0 and 1.2.0 pruned)
        ("update", "slow_ok"),  # 1.5.0 (1.1.0 pruned)
        ("failed_update", "slow_past_timeout"),
        ("kill_child",),
        ("kill_child",),
        ("kill_child",),  # the third exit: back to 1.4.0, 1.5.0 blocked
        ("roll_back",),  # only the blocked 1.3.0 is older: nothing to roll back to
    ],
    "dying_later": [
        ("update", "grandchild"),  # 1.1.0
        ("failed_update", "dies_in_soak"),
        ("failed_update", "dies_on_probation"),
        ("kill_child",),  # its grandchild must go with it
        ("failed_update", "dies_after_probation"),  # crash loop: back to 1.1.0
        ("roll_back",),  # to 1.0.0
    ],
    "on_probation": [
        ("act_on_probation", "roll_back"),  # 1.1.0, then back to 1.0.0 at once
        ("act_on_probation", "kill_child"),  # 1.2.0 fails probation: 1.0.0 again
        ("act_on_probation", "update"),  # 1.3.0, then 1.4.0 during its probation
        ("act_on_probation", "failed_update"),  # 1.5.0, 1.6.0 refused meanwhile
        ("act_on_probation", "restart_app"),  # 1.7.0
    ],
    "broken_releases_and_restarts": [
        ("publish", "broken_archive", True),  # 1.1.0
        ("publish", "wrong_checksum", True),
        ("publish", "no_asset", True),
        ("publish", "slow_ok", False),  # 1.4.0, installed by the start-up check
        ("restart_app",),
        ("remove_release", "1.4.0"),
        ("check",),
        ("restart_app",),
        ("roll_back",),
    ],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_lifecycle_script(name: str) -> None:
    machine = Lifecycle()
    try:
        machine.serves_what_it_says()
        for step, *args in SCRIPTS[name]:
            getattr(machine, step)(*args)
            machine.serves_what_it_says()
    finally:
        machine.teardown()


# --- regressions: what the property found ----------------------------------------------------


def test_a_request_right_after_start_is_held_until_the_child_serves(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """The proxy listened before the worker's boot said "hold": a request in between got 503
    at once, although a version was installed (restart_app sees it now and then: a request
    must land in those few milliseconds). Here the worker starts late on purpose; the
    request must wait for 1.0.0 instead."""
    publish_version(feed, "1.0.0")
    config = make_config(feed, tmp_path / "data")
    first = App(config)
    first.start()
    try:
        wait_for(running(first, "1.0.0"), what="1.0.0 running")
    finally:
        first.stop()

    again = App(config, check_on_start=False)
    start_worker = again.updater.start
    answers: list[tuple[int, str]] = []

    def late_worker() -> None:  # the proxy listens already; the worker is slow to boot
        asking = threading.Thread(
            target=lambda: answers.append(proxy_get(again.proxy.address[1], "/version"))
        )
        asking.start()
        time.sleep(0.5)
        start_worker()
        asking.join(HOLD_SECONDS + 10)

    again.updater.start = late_worker  # type: ignore[method-assign]
    try:
        again.start()
    finally:
        again.stop()
        _forget_log_handlers(tmp_path)
    assert answers == [(200, "1.0.0")]
